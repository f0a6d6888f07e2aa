// Live sessions (GET /v1/sessions, docs/sessions.md): one program in a warm
// box, stdin in and stdout/stderr out as they happen.  The browser's
// WebSocket when the runtime has one; else (Node 20) the `ws` package, loaded
// only then, so browsers and Node 22+ need nothing.

import { decodeRunResult } from "./codec.js";
import { encodeBytes } from "./bytes.js";
import { SandboxdError } from "./errors.js";

/**
 * @typedef {import("../index.js").SessionStart} SessionStart
 * @typedef {import("../index.js").SessionOptions} SessionOptions
 * @typedef {import("../index.js").SessionEnd} SessionEnd
 * @typedef {import("../index.js").SessionSignal} SessionSignal
 * @typedef {import("../index.js").RunResult} RunResult
 */

const STREAMS = /** @type {const} */ ({ 1: "stdout", 2: "stderr" });
// Bytes queued in the socket before write() waits (the daemon's side is bounded too).
const HIGH_WATER = 1 << 20;
const WS_PACKAGE = "ws"; // (a variable: bundlers and tsc leave the Node-only import alone)

/** @returns {Promise<any>} a WebSocket constructor */
async function webSocketClass() {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.WebSocket === "function") return g.WebSocket;
  const mod = await import(WS_PACKAGE);
  return mod.default ?? mod.WebSocket;
}

/**
 * @param {string} baseUrl http(s)://host:port of a daemon or coordinator
 * @returns {string} its ws(s):// session URL
 */
export function sessionUrl(baseUrl) {
  const url = new URL(baseUrl);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new TypeError(`baseUrl: use http:// or https://`);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href.replace(/\/+$/, "") + "/v1/sessions";
}

/**
 * @param {SessionStart} start
 * @param {string | undefined} token
 */
function encodeStart(start, token) {
  /** @type {Record<string, unknown>} */
  const msg = { type: "start", ...start };
  if (token) msg.token = token;
  if (start.files) msg.files = start.files.map((f) => ({ ...f, content: encodeBytes(f.content ?? "", "files.content") }));
  return JSON.stringify(msg);
}

export class Session {
  /** @type {any} */ #ws;
  /** @type {Promise<SessionEnd>} */ result;
  /** @type {Promise<void>} */ started;
  /** @type {RunResult | null} */ compiled = null;

  /**
   * @param {any} ws an open WebSocket
   * @param {SessionOptions} options
   */
  constructor(ws, options) {
    this.#ws = ws;
    /** @type {(v: void) => void} */
    let onStarted = () => {};
    /** @type {(e: unknown) => void} */
    let notStarted = () => {};
    this.started = new Promise((ok, fail) => {
      onStarted = ok;
      notStarted = fail;
    });
    this.started.catch(() => {}); // (a caller that only awaits result must not see an unhandled rejection)
    this.result = new Promise((ok, fail) => {
      /** @type {SessionEnd | null} */
      let end = null;
      /** @type {SandboxdError | null} */
      let error = null;
      ws.onmessage = (/** @type {{ data: any }} */ ev) => {
        if (typeof ev.data === "string") {
          const msg = JSON.parse(ev.data);
          if (msg.type === "compiled") this.compiled = decodeRunResult(msg.result);
          else if (msg.type === "started") onStarted();
          else if (msg.type === "result") end = { result: decodeRunResult(msg.result), reason: msg.reason };
          else if (msg.type === "error") {
            error = new SandboxdError(msg.code, msg.message, { retryAfter: msg.retry_after ?? null });
          }
          options.onEvent?.(msg);
          return;
        }
        const bytes = new Uint8Array(ev.data);
        const stream = STREAMS[/** @type {1 | 2} */ (bytes[0])];
        if (stream !== undefined) options.onOutput?.(stream, bytes.subarray(1));
      };
      ws.onclose = (/** @type {{ code: number }} */ ev) => {
        if (end !== null) {
          ok(end);
          notStarted(new SandboxdError("closed", "the program never started"));
          return;
        }
        const e = error ?? new SandboxdError("disconnected", `the session closed (code ${ev.code}) without a result`);
        notStarted(e);
        fail(e);
      };
    });
  }

  /**
   * Bytes (or a string's UTF-8) to the program's stdin; resolves once the
   * socket's buffer is below its high-water mark (back-pressure).
   * @param {Uint8Array | ArrayBuffer | string} data
   */
  async write(data) {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data);
    this.#ws.send(bytes);
    while (this.#ws.bufferedAmount > HIGH_WATER && this.#ws.readyState === 1) {
      await new Promise((ok) => setTimeout(ok, 10));
    }
  }

  /** Close the program's stdin. */
  eof() {
    this.#ws.send(JSON.stringify({ type: "eof" }));
  }

  /** @param {SessionSignal} signal */
  signal(signal) {
    this.#ws.send(JSON.stringify({ type: "signal", signal }));
  }

  /** End the run now. */
  kill() {
    this.#ws.send(JSON.stringify({ type: "kill" }));
  }

  /** Leave: the daemon kills the run. */
  close() {
    this.#ws.close();
  }
}

/**
 * Open a live session and send its start message.
 * @param {string} baseUrl http(s)://host:port of a daemon or coordinator
 * @param {SessionStart} start
 * @param {SessionOptions} [options]
 * @returns {Promise<Session>}
 */
export async function session(baseUrl, start, options = {}) {
  const WS = await webSocketClass();
  const url = sessionUrl(baseUrl);
  const browser = WS === /** @type {any} */ (globalThis).WebSocket;
  const token = options.token;
  // A browser's WebSocket cannot carry headers: the token goes in the start message.
  const ws = browser || !token ? new WS(url) : new WS(url, { headers: { Authorization: `Bearer ${token}` } });
  ws.binaryType = "arraybuffer";
  await new Promise((ok, fail) => {
    ws.onopen = ok;
    ws.onerror = (/** @type {any} */ ev) =>
      fail(new SandboxdError("disconnected", `cannot open ${url}: ${ev?.message ?? "connection refused"}`));
  });
  ws.onerror = () => {};
  const s = new Session(ws, options);
  ws.send(encodeStart(start, browser ? token : undefined));
  return s;
}
