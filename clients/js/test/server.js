// The real `switchyard` binary for the tests: started on 127.0.0.1:0 (or a given port,
// to restart in place) with a temporary data directory, stopped by the test.

import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

// Node 18 has no WebSocket: the tests then use the `ws` package (Debian's node-ws),
// as an application on Node 18 would pass it in.
if (typeof globalThis.WebSocket !== "function") {
  globalThis.WebSocket = createRequire(import.meta.url)("ws");
}

const here = fileURLToPath(new URL(".", import.meta.url));
export const BINARY = process.env.SWITCHYARD_BIN || resolve(here, "../../../target/debug/switchyard");

export class Server {
  /** `config`: TOML text for --config (tokens...). */
  static async start({ config = "", dataDir, port = 0 } = {}) {
    const s = new Server();
    s.dataDir = dataDir || mkdtempSync(join(tmpdir(), "switchyard-js-"));
    s.ownsDir = !dataDir;
    s.config = config;
    await s.launch(port);
    return s;
  }

  async launch(port) {
    const args = ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", this.dataDir];
    if (this.config) {
      const file = join(this.dataDir, "test.toml");
      writeFileSync(file, this.config);
      args.push("--config", file);
    }
    const env = { ...process.env };
    delete env.SWITCHYARD_CONFIG;
    this.child = spawn(BINARY, args, { stdio: ["ignore", "ignore", "pipe"], env });
    this.exited = new Promise((res) => this.child.once("exit", res));
    this.addr = await new Promise((res, rej) => {
      let text = "";
      const timer = setTimeout(() => rej(new Error(`no address announced: ${text}`)), 30000);
      this.child.stderr.on("data", (chunk) => {
        text += chunk;
        const m = /listening on http:\/\/([0-9.:]+)/.exec(text);
        if (m) {
          clearTimeout(timer);
          res(m[1]);
        }
        if (text.length > 100000) text = text.slice(-10000);
      });
      this.child.once("exit", (code) => rej(new Error(`switchyard exited ${code}: ${text}`)));
    });
    this.port = Number(this.addr.split(":").pop());
    this.url = `ws://${this.addr}/ws`;
    this.http = `http://${this.addr}`;
  }

  async stop() {
    if (this.child.exitCode === null) this.child.kill("SIGTERM");
    await this.exited;
  }

  /** Stops it and starts it again on the same port and data directory. */
  async restart() {
    await this.stop();
    await this.launch(this.port);
  }

  async close() {
    if (this.child.exitCode === null) this.child.kill("SIGKILL");
    await this.exited;
    if (this.ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Resolves when `predicate()` holds, polling; rejects after `ms`. */
export async function until(what, predicate, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The next `n` events of a subscription, within `ms`. */
export async function take(sub, n, ms = 10000) {
  const out = [];
  const deadline = setTimeout(() => sub.end(), ms);
  for await (const d of { [Symbol.asyncIterator]: () => ({ next: () => sub.next() }) }) {
    if (d.type === "event") out.push(d);
    if (out.length >= n) break;
  }
  clearTimeout(deadline);
  if (out.length < n) throw new Error(`got ${out.length} of ${n} events`);
  return out;
}
