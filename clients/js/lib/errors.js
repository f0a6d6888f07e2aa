// The one error type of the client: what the daemon refused (its wire code,
// message, HTTP status and Retry-After) or that it could not be reached.

/** @typedef {import("../index.js").ErrorCode} ErrorCode */

export class SandboxdError extends Error {
  /**
   * @param {ErrorCode | string} code the wire code (docs/protocol.md), "disconnected" when no reply came
   * @param {string} message
   * @param {{ status?: number | null, retryAfter?: number | null, cause?: unknown }} [extra]
   */
  constructor(code, message, extra = {}) {
    super(`${code}: ${message}`, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "SandboxdError";
    this.code = code;
    // (`message` is "code: text" like every Error's; the daemon's text alone is here.)
    this.detail = message;
    this.status = extra.status ?? null;
    this.retryAfter = extra.retryAfter ?? null;
  }
}

/**
 * Seconds from a Retry-After header: whole seconds or an HTTP date (RFC 9110).
 * @param {string | null} header
 * @returns {number | null}
 */
export function parseRetryAfter(header) {
  if (header === null || header.trim() === "") return null;
  if (/^\d+$/.test(header.trim())) return Number(header.trim());
  const at = Date.parse(header);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}

/**
 * The error of an HTTP reply with status >= 400.
 * @param {number} status
 * @param {string | null} retryAfterHeader
 * @param {unknown} payload the decoded JSON body, or undefined if it was not JSON
 * @param {string} raw the body as text (an error page of a proxy in front of sandboxd)
 * @returns {SandboxdError}
 */
export function httpError(status, retryAfterHeader, payload, raw) {
  /** @type {any} */
  const body = payload;
  const e = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const after = typeof e.retry_after === "number" ? e.retry_after : parseRetryAfter(retryAfterHeader);
  // A 503 without sandboxd's body (a proxy, a load balancer) is "not now" too.
  const code = typeof e.code === "string" ? e.code : status === 503 ? "draining" : String(status);
  const message = typeof e.message === "string" ? e.message : raw.slice(0, 200) || `HTTP ${status}`;
  return new SandboxdError(code, message, { status, retryAfter: after });
}
