// HTTP access to the router's JSON API with the user's token, and where that token lives.
//
// The token is kept in sessionStorage (gone when the tab closes) and sent as
// `Authorization: Bearer` on HTTP; the WebSocket URL carries it as `?token=` because
// browsers cannot set headers on an upgrade (docs/protocol.md section 1.3).

const TOKEN_KEY = "switchyard.token";

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lives only as long as this page.
  }
  memoryToken = token;
}

let memoryToken = "";

export function currentToken() {
  return getToken() || memoryToken;
}

/** An HTTP error answer: `status` and the server's `{error: {code, message}}`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** `fetch` on the API: JSON in and out, the token attached, errors thrown as ApiError. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const token = currentToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", `server unreachable (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText);
  }
  return data;
}

/** The WebSocket URL of this server (the client adds the token as `?token=`). */
export function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}
