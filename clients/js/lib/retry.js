// When and how long a call is retried (the Python client's policy,
// clients/python/sandboxd_client/retry.py, with one addition: 429 queue_full
// is retried too, since the daemon refuses it before a job exists).
//
// A retry re-sends the same idempotency key, so the daemon (or a fleet)
// answers with the job the first attempt started, if it started one: a job
// never runs twice.  A POST without a key is retried only on refusals
// (429/503), never after a dropped connection, where its job may exist.

import { SandboxdError } from "./errors.js";

/** @typedef {import("../index.js").RetryPolicy} RetryPolicy */

/** @type {Required<RetryPolicy>} */
export const DEFAULT_RETRY = Object.freeze({ deadline: 60, first: 0.1, factor: 2, cap: 5 });

// Wire codes and HTTP statuses that mean "not now, try again".
const RETRY_CODES = new Set(["draining", "queue_full", "disconnected"]);
const RETRY_STATUSES = new Set([429, 503]);
// Node (undici) causes of a live connection that dropped, as opposed to one
// that was refused: a drop starts a new outage (a long waited call is not cut
// short by the time its first attempt ran).  A browser says neither: its
// failures count as refusals, which keeps every outage bounded.  Node's fetch
// gives up on a reply whose headers take 300 s (a waited run still queued or
// running): that is a drop as well, and the retry waits on for the same job.
const DROPPED = new Set(["UND_ERR_SOCKET", "ECONNRESET", "EPIPE", "UND_ERR_CLOSED", "UND_ERR_HEADERS_TIMEOUT"]);

/**
 * @param {RetryPolicy | false | undefined} given
 * @returns {Required<RetryPolicy>}
 */
export function policy(given) {
  if (given === false) return { ...DEFAULT_RETRY, deadline: 0 };
  const p = { ...DEFAULT_RETRY, ...(given ?? {}) };
  for (const [k, v] of Object.entries(p)) {
    if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v)) {
      throw new TypeError(`retry.${k}: a finite number of seconds >= 0, not ${String(v)}`);
    }
  }
  return p;
}

/**
 * The wait before retry number `attempt` (0-based), in seconds: full jitter
 * in the upper half, so clients that failed together do not come back together.
 * @param {Required<RetryPolicy>} p
 * @param {number} attempt
 */
export function backoff(p, attempt) {
  const base = Math.min(p.cap, p.first * p.factor ** attempt);
  return base * (0.5 + Math.random() / 2);
}

/**
 * How a failed attempt may go on: null if it is final, else the least wait
 * the server asked for and whether a live connection dropped.
 * @param {unknown} err
 * @param {boolean} resendable the request may be sent again even if it reached the daemon
 * @returns {{ after: number, dropped: boolean } | null}
 */
export function retryable(err, resendable) {
  if (!(err instanceof SandboxdError)) return null;
  if (err.code === "disconnected") {
    return resendable ? { after: 0, dropped: DROPPED.has(causeCode(err)) } : null;
  }
  const again = RETRY_CODES.has(err.code) || (err.status !== null && RETRY_STATUSES.has(err.status));
  return again ? { after: err.retryAfter ?? 0, dropped: false } : null;
}

/** @param {SandboxdError} err */
function causeCode(err) {
  /** @type {any} */
  const c = err.cause;
  return String(c?.cause?.code ?? c?.code ?? "");
}

/**
 * Sleep `seconds`, or reject with the signal's reason once it aborts.
 * @param {number} seconds
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<void>}
 */
export function sleep(seconds, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const timer = setTimeout(done, seconds * 1000);
    const stop = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}
