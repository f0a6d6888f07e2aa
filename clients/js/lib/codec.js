// Requests into the daemon's JSON and results out of it: the bytes fields of
// the schema (sandboxd/schema.py, published in /openapi.json) walked by
// type, so that a key named "content" elsewhere (status, languages) is never
// decoded by mistake.  Requests are copied, never changed in place.

import { decodeBytes, encodeBytes } from "./bytes.js";

/**
 * @typedef {import("../index.js").RunRequest} RunRequest
 * @typedef {import("../index.js").Submission} Submission
 * @typedef {import("../index.js").RunResult} RunResult
 * @typedef {import("../index.js").SubmissionResult} SubmissionResult
 * @typedef {import("../index.js").TestResult} TestResult
 * @typedef {import("../index.js").JobInfo} JobInfo
 * @typedef {Record<string, unknown>} Obj
 */

/**
 * @param {unknown} v
 * @param {string} field
 * @returns {Obj}
 */
function object(v, field) {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new TypeError(`${field}: must be an object`);
  }
  return /** @type {Obj} */ (v);
}

/**
 * A copy of `obj` with each of `keys` (where present and not null) base64-encoded.
 * @param {Obj} obj
 * @param {string} at
 * @param {string[]} keys
 * @returns {Obj}
 */
function withBytes(obj, at, keys) {
  const out = { ...obj };
  for (const k of keys) {
    if (out[k] !== undefined && out[k] !== null) out[k] = encodeBytes(out[k], `${at}${k}`);
  }
  return out;
}

/**
 * @param {unknown} list
 * @param {string} at e.g. "files_in"
 * @param {(item: unknown, at: string) => Obj} each
 * @returns {unknown}
 */
function mapList(list, at, each) {
  if (list === undefined || list === null) return list;
  if (!Array.isArray(list)) throw new TypeError(`${at}: must be an array`);
  return list.map((item, i) => each(item, `${at}[${i}]`));
}

/** @param {unknown} f @param {string} at */
const fileIn = (f, at) => withBytes(object(f, at), `${at}.`, ["content"]);

/** @param {unknown} p @param {string} at */
const program = (p, at) => withBytes(object(p, at), `${at}.`, ["source"]);

/**
 * @param {RunRequest} req
 * @returns {Obj}
 */
export function encodeRun(req) {
  const out = withBytes(object(req, "request"), "", ["stdin"]);
  // (An absent list stays undefined, which JSON.stringify leaves out.)
  out.files_in = mapList(out.files_in, "files_in", fileIn);
  return out;
}

/**
 * @param {Submission} sub
 * @returns {Obj}
 */
export function encodeSubmission(sub) {
  const out = withBytes(object(sub, "submission"), "", ["source"]);
  out.files = mapList(out.files, "files", fileIn);
  out.tests = mapList(out.tests, "tests", (t, at) => withBytes(object(t, at), `${at}.`, ["input", "expected"]));
  if (out.checker !== undefined && out.checker !== null) {
    const checker = { ...object(out.checker, "checker") };
    if (checker.program !== undefined && checker.program !== null) {
      checker.program = program(checker.program, "checker.program");
    }
    out.checker = checker;
  }
  if (out.interactor !== undefined && out.interactor !== null) out.interactor = program(out.interactor, "interactor");
  return out;
}

/**
 * @param {any} r
 * @returns {RunResult}
 */
export function decodeRunResult(r) {
  return {
    ...r,
    stdout: decodeBytes(r.stdout),
    stderr: decodeBytes(r.stderr),
    files: (r.files ?? []).map(
      /** @param {any} f */ (f) => (typeof f.content === "string" ? { ...f, content: decodeBytes(f.content) } : f),
    ),
  };
}

/**
 * @param {any} t
 * @returns {TestResult}
 */
export function decodeTest(t) {
  return { ...t, stdout: decodeBytes(t.stdout), stderr: decodeBytes(t.stderr) };
}

/**
 * @param {any} s
 * @returns {SubmissionResult}
 */
export function decodeSubmissionResult(s) {
  return {
    ...s,
    compile: s.compile ? decodeRunResult(s.compile) : null,
    tests: (s.tests ?? []).map(decodeTest),
    runs: (s.runs ?? []).map(decodeRunResult),
  };
}

/**
 * A result by its `kind` tag.
 * @param {any} r
 * @returns {RunResult | SubmissionResult | null}
 */
function decodeResult(r) {
  if (r === null || r === undefined) return null;
  return r.kind === "submission" ? decodeSubmissionResult(r) : decodeRunResult(r);
}

/**
 * @param {any} info
 * @returns {JobInfo}
 */
export function decodeJobInfo(info) {
  return { ...info, result: decodeResult(info.result) };
}
