// Server-Sent Events (text/event-stream, as the WHATWG HTML spec parses them)
// from a fetch Response's body: what `POST /v1/submissions` answers with
// `Accept: text/event-stream` (sandboxd/api/sse.py).  A parser of our own
// rather than EventSource: EventSource can only GET, and sends no headers.

import { SandboxdError } from "./errors.js";

// Characters of one event (a SubmissionResult's JSON with its outputs can be
// megabytes): past it the stream is refused, not buffered without end.
export const MAX_EVENT = 1 << 30;

/**
 * The stream's events, in order; comments (keep-alives) skipped.
 * @param {ReadableStream<Uint8Array>} body
 * @param {number} [max] characters one event may hold
 * @returns {AsyncGenerator<{ event: string, data: string }, void, undefined>}
 */
export async function* readEvents(body, max = MAX_EVENT) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const ev = { event: "", data: /** @type {string[]} */ ([]) };
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // (Searched from where the last chunk ended: a long line costs its length, not its length squared.)
      let from = buf.length;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n", from)) >= 0) {
        const line = buf.slice(0, buf[nl - 1] === "\r" ? nl - 1 : nl);
        buf = buf.slice(nl + 1);
        from = 0;
        const out = field(ev, line);
        if (out !== null) yield out;
      }
      if (buf.length > max) throw new SandboxdError("invalid_reply", `an event of over ${max} characters`);
    }
  } finally {
    // (An early `break` of the caller: the connection is closed; the job goes on on the daemon.)
    reader.cancel().catch(() => {});
  }
}

/**
 * One line into the event being read; the event once a blank line ends it.
 * @param {{ event: string, data: string[] }} ev
 * @param {string} line
 * @returns {{ event: string, data: string } | null}
 */
function field(ev, line) {
  if (line === "") {
    const out = ev.data.length ? { event: ev.event || "message", data: ev.data.join("\n") } : null;
    ev.event = "";
    ev.data = [];
    return out;
  }
  if (line.startsWith(":")) return null;
  const colon = line.indexOf(":");
  const name = colon < 0 ? line : line.slice(0, colon);
  let value = colon < 0 ? "" : line.slice(colon + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (name === "event") ev.event = value;
  else if (name === "data") ev.data.push(value);
  return null;
}
