// Bytes on the JSON wire: the daemon's bytes fields (stdin, source, content,
// input, expected, stdout, stderr) are base64 strings in JSON.  The caller
// gives a Uint8Array or a string (sent as UTF-8) and gets Uint8Array back;
// only the fields the schema declares as bytes are touched, so a string
// anywhere else is sent as it is.

const encoder = new TextEncoder();
const decoder = new TextDecoder();
// String.fromCharCode takes its arguments on the stack: convert in slices.
const SLICE = 0x8000;

/** @typedef {import("../index.js").BytesLike} BytesLike */

/**
 * Node's Buffer when there is one (base64 in C++, far faster on megabytes),
 * else btoa/atob, which every browser and Node 16+ have.
 * @typedef {Uint8Array & { toString(enc: string): string }} NodeBytes
 * @type {{ from(data: ArrayBufferLike | string, offsetOrEnc?: number | string, length?: number): NodeBytes } | undefined}
 */
// @ts-ignore -- Buffer is Node's, absent from the DOM types this file is checked with
const NodeBuffer = globalThis.Buffer;

/**
 * @param {unknown} value
 * @param {string} field the field's path, for the error
 * @returns {string} base64
 */
export function encodeBytes(value, field) {
  /** @type {Uint8Array} */
  let bytes;
  if (typeof value === "string") bytes = encoder.encode(value);
  else if (value instanceof Uint8Array) bytes = value;
  else if (value instanceof ArrayBuffer) bytes = new Uint8Array(value);
  else throw new TypeError(`${field}: give a Uint8Array or a string (sent as UTF-8), not ${describe(value)}`);
  if (NodeBuffer) return NodeBuffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let bin = "";
  for (let i = 0; i < bytes.length; i += SLICE) {
    bin += String.fromCharCode.apply(null, Array.from(bytes.subarray(i, i + SLICE)));
  }
  return btoa(bin);
}

/**
 * @param {unknown} value a base64 string from the daemon
 * @returns {Uint8Array}
 */
export function decodeBytes(value) {
  if (typeof value !== "string") return new Uint8Array(0);
  if (NodeBuffer) {
    const b = NodeBuffer.from(value, "base64");
    // A small Buffer is a view into Node's shared pool: copy it, so the
    // caller's .buffer holds these bytes only.
    const whole = b.byteOffset === 0 && b.buffer.byteLength === b.byteLength;
    return whole ? new Uint8Array(b.buffer) : new Uint8Array(b);
  }
  const bin = atob(value);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Bytes as text (UTF-8; invalid sequences become U+FFFD).
 * @param {Uint8Array | null | undefined} bytes
 * @returns {string}
 */
export function text(bytes) {
  return bytes ? decoder.decode(bytes) : "";
}

/** @param {unknown} v */
function describe(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  return `a ${typeof v}`;
}
