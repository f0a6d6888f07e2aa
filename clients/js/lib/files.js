// The content-addressed file store (PUT/HEAD/GET /v1/files/{sha256}): files a
// run or submission names by hash instead of carrying them (README "File
// store").  The SHA-256 is computed here, with Web Crypto.

const SHA256 = /^[0-9a-f]{64}$/;

/**
 * @param {import("../index.js").BytesLike} data
 * @returns {Uint8Array<ArrayBuffer>}
 */
export function toBytes(data) {
  if (typeof data === "string") return new TextEncoder().encode(data);
  // (fetch and digest take no view of a SharedArrayBuffer: copied into one of its own)
  if (data instanceof Uint8Array) return data.buffer instanceof ArrayBuffer ? /** @type {Uint8Array<ArrayBuffer>} */ (data) : data.slice();
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  throw new TypeError("data: give a Uint8Array, an ArrayBuffer or a string (sent as UTF-8)");
}

/** @param {string} sha */
export function filePath(sha) {
  if (typeof sha !== "string" || !SHA256.test(sha)) {
    throw new TypeError(`sha256: 64 lowercase hex digits, not ${JSON.stringify(sha)}`);
  }
  return `/v1/files/${sha}`;
}

/**
 * Hex SHA-256 of `bytes`.
 * @param {Uint8Array<ArrayBuffer>} bytes
 * @param {Crypto} crypto
 * @returns {Promise<string>}
 */
export async function sha256(bytes, crypto) {
  if (!crypto.subtle) {
    // (Browsers give Web Crypto's digest only to secure contexts: https or localhost.)
    throw new Error("upload: no crypto.subtle here to hash with (a page not served over https or localhost?)");
  }
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}
