// The client of sandboxd's native HTTP API (/openapi.json on a daemon or a
// coordinator): JSON bodies over fetch, which Node 18+ and browsers have, so
// the package needs nothing at run time.

import { decodeJobInfo, decodeRunResult, decodeSubmissionResult, decodeTest, encodeRun, encodeSubmission } from "./codec.js";
import { SandboxdError, httpError } from "./errors.js";
import { readEvents } from "./events.js";
import { filePath, sha256, toBytes } from "./files.js";
import { backoff, policy, retryable, sleep } from "./retry.js";

/**
 * @typedef {import("../index.js").ClientOptions} ClientOptions
 * @typedef {import("../index.js").CallOptions} CallOptions
 * @typedef {import("../index.js").StartOptions} StartOptions
 * @typedef {import("../index.js").WaitOptions} WaitOptions
 * @typedef {import("../index.js").RunRequest} RunRequest
 * @typedef {import("../index.js").Submission} Submission
 * @typedef {import("../index.js").RunResult} RunResult
 * @typedef {import("../index.js").SubmissionResult} SubmissionResult
 * @typedef {import("../index.js").JobInfo} JobInfo
 * @typedef {import("../index.js").JobState} JobState
 * @typedef {import("../index.js").Language} Language
 * @typedef {import("../index.js").Readiness} Readiness
 * @typedef {import("../index.js").RetryPolicy} RetryPolicy
 * @typedef {import("../index.js").SubmissionEvent} SubmissionEvent
 * @typedef {import("../index.js").BytesLike} BytesLike
 * @typedef {"json" | "events" | "bytes"} Reply what a call reads: JSON, a text/event-stream, or raw bytes
 * @typedef {{ body?: unknown, raw?: Uint8Array<ArrayBuffer>, key?: string, resendable: boolean, signal?: AbortSignal,
 *   accept?: number[], reply?: Reply }} Call
 */

/** @type {ReadonlySet<JobState>} */
export const FINAL_STATES = new Set(["done", "cancelled", "failed", "lost"]);
// The longest one long poll of GET /v1/jobs/{id}?wait= asks for: the daemon
// allows 300 s, and Node's fetch gives up on headers after 300 s.
const POLL = 240;
// Header values fetch would refuse (it throws before sending, which must not
// look like an unreachable daemon): the daemon's own rule for keys, and
// printable ASCII for a token.
const KEY = /^[!-~]{1,255}$/;
const TOKEN = /^[!-~]+$/;

const now = () => performance.now() / 1000;

export class Client {
  /** @type {string} */ #base;
  /** @type {Record<string, string>} */ #headers;
  /** @type {Required<RetryPolicy>} */ #retry;
  /** @type {typeof fetch} */ #fetch;

  /**
   * @param {string} baseUrl e.g. "http://127.0.0.1:7070" (a path prefix is kept)
   * @param {ClientOptions} [options]
   */
  constructor(baseUrl, options = {}) {
    const url = new URL(baseUrl);
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError(`baseUrl ${JSON.stringify(baseUrl)}: use http://host:port or https://host:port`);
    }
    if (url.search || url.hash) throw new TypeError(`baseUrl ${JSON.stringify(baseUrl)}: no ?query or #fragment`);
    this.#base = url.href.replace(/\/+$/, "");
    this.#headers = { Accept: "application/json" };
    if (options.token !== undefined && options.token !== "") {
      if (!TOKEN.test(options.token)) throw new TypeError("token: printable ASCII without spaces");
      this.#headers.Authorization = `Bearer ${options.token}`;
    }
    this.#retry = policy(options.retry);
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("fetch: none in this runtime (Node 18+ or a browser), pass one");
    this.#fetch = f.bind(globalThis);
  }

  /** The base URL calls go to. */
  get baseUrl() {
    return this.#base;
  }

  /**
   * Run one program and wait for its result.
   * @param {RunRequest} req
   * @param {StartOptions} [options]
   * @returns {Promise<RunResult>}
   */
  async run(req, options = {}) {
    return decodeRunResult(await this.#post("/v1/runs", encodeRun(req), true, options));
  }

  /**
   * Judge a submission (compile once, run the tests, check) and wait for its result.
   * @param {Submission} sub
   * @param {StartOptions} [options]
   * @returns {Promise<SubmissionResult>}
   */
  async submit(sub, options = {}) {
    return decodeSubmissionResult(await this.#post("/v1/submissions", encodeSubmission(sub), true, options));
  }

  /**
   * Judge a submission and follow it: `accepted` (its job id) once it is queued,
   * one `test` per finished test (under a slow reader the daemon drops the
   * oldest: `result` has them all), then `result`, after which the iteration
   * ends.  The job's `error` event rejects with a SandboxdError.  Leaving the
   * loop early closes the stream; the job goes on (see job()/wait()).
   * Opening the stream is retried as submit() is; a stream cut afterwards
   * is not (a SandboxdError "disconnected": the job id came with `accepted`).
   * @param {Submission} sub
   * @param {StartOptions} [options]
   * @returns {AsyncGenerator<SubmissionEvent, void, undefined>}
   */
  async *submitEvents(sub, options = {}) {
    /** @type {any} */
    const opened = await this.#post("/v1/submissions", encodeSubmission(sub), true, options, "events");
    if (!(opened instanceof EventStream)) {
      // (A server that answered JSON, not a stream: the result alone.)
      yield { type: "result", result: decodeSubmissionResult(opened) };
      return;
    }
    for await (const ev of readEvents(opened.body)) {
      const data = parseEvent(ev);
      if (ev.event === "accepted") yield { type: "accepted", job: String(data.job) };
      else if (ev.event === "test") yield { type: "test", test: decodeTest(data) };
      else if (ev.event === "result") {
        yield { type: "result", result: decodeSubmissionResult(data) };
        return;
      } else if (ev.event === "error") throw httpError(200, null, data, ev.data);
    }
    throw new SandboxdError("disconnected", `the event stream from ${this.#base} ended before the result`);
  }

  /**
   * Store `data` in the daemon's (or the fleet's) file store, unless it is
   * there already; its SHA-256 (hex), to name it by in runs and submissions.
   * @param {BytesLike} data
   * @param {CallOptions} [options]
   * @returns {Promise<string>}
   */
  async upload(data, options = {}) {
    const bytes = toBytes(data);
    const sha = await sha256(bytes, await webcrypto());
    if (!(await this.hasFile(sha, options))) {
      // (Idempotent by its nature: the same bytes under the same name, resent at will.)
      await this.#call("PUT", filePath(sha), { raw: bytes, resendable: true, signal: options.signal });
    }
    return sha;
  }

  /**
   * Whether the store holds the file of this SHA-256.
   * @param {string} sha
   * @param {CallOptions} [options]
   * @returns {Promise<boolean>}
   */
  async hasFile(sha, options = {}) {
    /** @type {any} */
    const got = await this.#call("HEAD", filePath(sha), { resendable: true, accept: [404], signal: options.signal });
    return got.status === 200;
  }

  /**
   * The stored file's bytes (checked against its SHA-256); SandboxdError "not_found" if not stored.
   * @param {string} sha
   * @param {CallOptions} [options]
   * @returns {Promise<Uint8Array>}
   */
  async download(sha, options = {}) {
    const path = filePath(sha);
    /** @type {any} */
    const bytes = await this.#call("GET", path, { resendable: true, reply: "bytes", signal: options.signal });
    if ((await sha256(bytes, await webcrypto())) !== sha) {
      throw new SandboxdError("invalid_reply", `GET ${path}: the bytes received do not hash to ${sha}`);
    }
    return bytes;
  }

  /**
   * Queue a run without waiting: its JobInfo (state "queued" or later).
   * @param {RunRequest} req
   * @param {StartOptions} [options]
   * @returns {Promise<JobInfo>}
   */
  async startRun(req, options = {}) {
    return decodeJobInfo(await this.#post("/v1/runs", encodeRun(req), false, options));
  }

  /**
   * Queue a submission without waiting.
   * @param {Submission} sub
   * @param {StartOptions} [options]
   * @returns {Promise<JobInfo>}
   */
  async startSubmission(sub, options = {}) {
    return decodeJobInfo(await this.#post("/v1/submissions", encodeSubmission(sub), false, options));
  }

  /**
   * A job's state and, once final, its result.
   * @param {string} id
   * @param {CallOptions} [options]
   * @returns {Promise<JobInfo>}
   */
  async job(id, options = {}) {
    return decodeJobInfo(await this.#call("GET", jobPath(id), { resendable: true, signal: options.signal }));
  }

  /**
   * The job once it is final ("done", "cancelled", "failed", "lost"), or as
   * it is when `timeout` seconds have passed (long polls, no busy loop).
   * @param {string} id
   * @param {WaitOptions} [options]
   * @returns {Promise<JobInfo>}
   */
  async wait(id, options = {}) {
    const timeout = options.timeout ?? Infinity;
    if (!(timeout >= 0)) throw new TypeError(`timeout: seconds >= 0, not ${String(options.timeout)}`);
    const end = now() + timeout;
    for (;;) {
      const secs = Math.max(0, Math.min(POLL, end - now()));
      const path = `${jobPath(id)}?wait=${secs.toFixed(3)}`;
      /** @type {any} */
      const info = await this.#call("GET", path, { resendable: true, signal: options.signal });
      if (FINAL_STATES.has(info.state) || now() >= end) return decodeJobInfo(info);
    }
  }

  /**
   * Cancel a queued or running job (a final one is left as it is).
   * @param {string} id
   * @param {CallOptions} [options]
   * @returns {Promise<JobInfo>}
   */
  async cancel(id, options = {}) {
    return decodeJobInfo(await this.#call("DELETE", jobPath(id), { resendable: true, signal: options.signal }));
  }

  /**
   * @param {CallOptions} [options]
   * @returns {Promise<Language[]>}
   */
  async languages(options = {}) {
    return /** @type {Language[]} */ (await this.#call("GET", "/v1/languages", { resendable: true, signal: options.signal }));
  }

  /**
   * Pools, queues per priority, jobs and recent run times (the shape is the daemon's or the coordinator's).
   * @param {CallOptions} [options]
   * @returns {Promise<Record<string, unknown>>}
   */
  async status(options = {}) {
    return /** @type {Record<string, unknown>} */ (await this.#call("GET", "/v1/status", { resendable: true, signal: options.signal }));
  }

  /**
   * Liveness (GET /healthz, no token needed): true when the daemon answers;
   * not retried (a probe says how it is now), a SandboxdError when unreachable.
   * @param {CallOptions} [options]
   * @returns {Promise<boolean>}
   */
  async health(options = {}) {
    /** @type {any} */
    const r = await this.#once("GET", "/healthz", { resendable: true, signal: options.signal });
    return r?.ok === true;
  }

  /**
   * Readiness (GET /readyz): warm boxes, not draining, not healing; not retried.
   * @param {CallOptions} [options]
   * @returns {Promise<Readiness>}
   */
  async ready(options = {}) {
    return /** @type {Readiness} */ (await this.#once("GET", "/readyz", { resendable: true, accept: [503], signal: options.signal }));
  }

  /**
   * @param {string} path
   * @param {unknown} body
   * @param {boolean} wait
   * @param {StartOptions} options
   * @param {Reply} [reply]
   */
  async #post(path, body, wait, options, reply = "json") {
    const key = await idempotencyKey(options.idempotencyKey);
    let q = `?wait=${wait}`;
    if (options.callbackUrl !== undefined) q += `&callback_url=${encodeURIComponent(options.callbackUrl)}`;
    return this.#call("POST", path + q, { body, key, resendable: key !== undefined, signal: options.signal, reply });
  }

  /**
   * One call, retried under the policy.  The deadline bounds an outage, not
   * the call: it counts from the first failure, and a live connection that
   * drops starts a new outage; refusals end the call at the deadline.
   * @param {string} method
   * @param {string} path
   * @param {Call} call
   * @returns {Promise<unknown>}
   */
  async #call(method, path, call) {
    const p = this.#retry;
    let end = 0;
    let attempt = 0;
    for (;;) {
      try {
        return await this.#once(method, path, call);
      } catch (err) {
        const r = retryable(err, call.resendable);
        if (r === null || call.signal?.aborted) throw err;
        if (attempt === 0 || r.dropped) {
          end = now() + p.deadline;
          attempt = 0;
        }
        const delay = Math.max(backoff(p, attempt), r.after);
        if (now() + delay > end) throw err;
        attempt += 1;
        await sleep(delay, call.signal);
      }
    }
  }

  /**
   * One HTTP exchange: the decoded JSON body, or a SandboxdError.
   * @param {string} method
   * @param {string} path
   * @param {Call} call
   * @returns {Promise<unknown>}
   */
  async #once(method, path, call) {
    /** @type {Record<string, string>} */
    const headers = { ...this.#headers, ...ACCEPT[call.reply ?? "json"] };
    if (call.body !== undefined) headers["Content-Type"] = "application/json";
    if (call.raw !== undefined) headers["Content-Type"] = "application/octet-stream";
    if (call.key !== undefined) headers["Idempotency-Key"] = call.key;
    const body = call.raw ?? (call.body === undefined ? undefined : JSON.stringify(call.body));
    let raw;
    /** @type {Response} */
    let resp;
    try {
      resp = await this.#fetch(this.#base + path, { method, headers, body, signal: call.signal });
      const ctype = resp.headers.get("Content-Type") ?? "";
      if (resp.status < 400 && call.reply === "events" && ctype.startsWith("text/event-stream") && resp.body) {
        return new EventStream(resp.body);
      }
      if (resp.status < 400 && call.reply === "bytes") return new Uint8Array(await resp.arrayBuffer());
      // (HEAD: no body; the status is the answer.)
      if (method === "HEAD" && (resp.status < 400 || call.accept?.includes(resp.status))) return { status: resp.status };
      raw = method === "HEAD" ? "" : await resp.text();
    } catch (err) {
      // The caller's abort is the caller's: given back as it is, never retried.
      if (call.signal?.aborted) throw call.signal.reason ?? err;
      const why = err instanceof Error ? err.message : String(err);
      throw new SandboxdError("disconnected", `no reply from sandboxd at ${this.#base}: ${why}`, { cause: err });
    }
    const payload = parseJson(raw, resp.headers.get("Content-Type"));
    if (resp.status >= 400 && !call.accept?.includes(resp.status)) {
      throw httpError(resp.status, resp.headers.get("Retry-After"), payload, raw);
    }
    if (payload === undefined) {
      const what = `${method} ${path}: HTTP ${resp.status} with a body that is not JSON: ${raw.slice(0, 200)}`;
      throw new SandboxdError("invalid_reply", what, { status: resp.status });
    }
    return payload;
  }
}

// The Accept header of each kind of reply.
/** @type {Record<Reply, Record<string, string>>} */
const ACCEPT = {
  json: {},
  events: { Accept: "text/event-stream" },
  bytes: { Accept: "application/octet-stream, application/json" },
};

/** A text/event-stream reply, opened (the events are read by the caller). */
class EventStream {
  /** @param {ReadableStream<Uint8Array>} body */
  constructor(body) {
    this.body = body;
  }
}

/**
 * An event's data: one line of JSON.
 * @param {{ event: string, data: string }} ev
 * @returns {any}
 */
function parseEvent(ev) {
  try {
    return JSON.parse(ev.data);
  } catch {
    throw new SandboxdError("invalid_reply", `event ${ev.event}: data that is not JSON: ${ev.data.slice(0, 200)}`);
  }
}

/** @param {string} id */
function jobPath(id) {
  if (typeof id !== "string" || id === "") throw new TypeError("job id: a non-empty string");
  return `/v1/jobs/${encodeURIComponent(id)}`;
}

/**
 * @param {string} raw
 * @param {string | null} ctype
 * @returns {unknown} undefined if the body is not JSON
 */
function parseJson(raw, ctype) {
  if (!ctype?.includes("json")) return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

/**
 * The key a job-starting call sends: the caller's, a fresh random one
 * (the default), or none (`false`: then a dropped connection is not retried).
 * @param {string | false | undefined} given
 * @returns {Promise<string | undefined>}
 */
export async function idempotencyKey(given) {
  if (given === false) return undefined;
  if (given !== undefined) {
    if (typeof given !== "string" || !KEY.test(given)) {
      throw new TypeError("idempotencyKey: 1..255 printable ASCII characters (0x21-0x7e), or false for none");
    }
    return given;
  }
  const bytes = new Uint8Array(16);
  (await webcrypto()).getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** @type {Crypto | undefined} */
let cryptoImpl;

/**
 * The Web Crypto API: global in browsers and Node 19+; Node 18 has it only as
 * node:crypto's `webcrypto` (its global is behind a flag there).
 * @returns {Promise<Crypto>}
 */
async function webcrypto() {
  if (cryptoImpl) return cryptoImpl;
  // (The DOM types declare the global always there; Node 18 lacks it.)
  const global = /** @type {Crypto | undefined} */ (globalThis.crypto);
  if (global?.getRandomValues) return (cryptoImpl = global);
  // (A computed name: a bundler for the browser never tries to resolve it.)
  const name = "node:crypto";
  /** @type {any} */
  const mod = await import(name);
  cryptoImpl = /** @type {Crypto} */ (mod.webcrypto);
  return cryptoImpl;
}
