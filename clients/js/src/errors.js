// Typed errors: every failure a caller sees is a SwitchyardError whose `code` is either
// one of the protocol's stable error codes (docs/protocol.md section 7) or one of the
// client's own (`timeout`, `closed`, `failed`, `disconnected`, `unexpected`).

/** The protocol's error codes (docs/protocol.md section 7), and the client's own. */
export const ErrorCode = Object.freeze({
  INVALID_JSON: "invalid_json",
  UNKNOWN_COMMAND: "unknown_command",
  INVALID_EVENT: "invalid_event",
  INVALID_SUBSCRIPTION: "invalid_subscription",
  INVALID_PATTERN: "invalid_pattern",
  INVALID_CONDITION: "invalid_condition",
  UNKNOWN_SUBSCRIPTION: "unknown_subscription",
  UNKNOWN_EVENT: "unknown_event",
  UNSUPPORTED_FRAME: "unsupported_frame",
  PAYLOAD_TOO_LARGE: "payload_too_large",
  RATE_LIMITED: "rate_limited",
  TOO_MANY_SUBSCRIPTIONS: "too_many_subscriptions",
  UNAUTHORIZED: "unauthorized",
  FORBIDDEN: "forbidden",
  INTERNAL: "internal",
  UNAVAILABLE: "unavailable",
  // The client's own.
  /** No reply within `requestTimeoutMs`. */
  TIMEOUT: "timeout",
  /** `close()` was called. */
  CLOSED: "closed",
  /** `maxAttempts` reconnects failed in a row, or the credential was refused. */
  FAILED: "failed",
  /** The connection dropped before the reply to a request that is not retried. */
  DISCONNECTED: "disconnected",
  /** The server answered something this client does not understand. */
  UNEXPECTED: "unexpected",
});

/** A failed call: `code` is stable, `message` is for humans. */
export class SwitchyardError extends Error {
  constructor(code, message, { requestId, status } = {}) {
    super(message || code);
    this.name = "SwitchyardError";
    this.code = code;
    if (requestId !== undefined) this.requestId = requestId;
    if (status !== undefined) this.status = status;
  }

  /** The error an `error` frame, or a batch item's `error` object, stands for. */
  static fromServer(error) {
    const e = error && typeof error === "object" ? error : {};
    return new SwitchyardError(
      typeof e.code === "string" ? e.code : ErrorCode.UNEXPECTED,
      typeof e.message === "string" ? e.message : "",
      { requestId: e.request_id },
    );
  }
}
