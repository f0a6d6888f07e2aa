// Bytes fields on the JSON wire, without a daemon: what goes out is the
// base64 of the UTF-8 or the bytes given, only in the schema's bytes fields,
// and the caller's objects are left as they were.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";

import { decodeBytes, encodeBytes } from "../lib/bytes.js";
import { decodeJobInfo, encodeRun, encodeSubmission } from "../lib/codec.js";

test("strings go as UTF-8, bytes as they are, both base64", () => {
  assert.equal(encodeBytes("hé", "stdin"), "aMOp");
  assert.equal(encodeBytes(new Uint8Array([0, 255, 10]), "stdin"), "AP8K");
  const view = new Uint8Array([9, 0, 255, 10, 9]).subarray(1, 4); // a view: only its own bytes
  assert.equal(encodeBytes(view, "stdin"), "AP8K");
  assert.deepEqual(decodeBytes("AP8K"), new Uint8Array([0, 255, 10]));
  const big = new Uint8Array(200_000).map((_, i) => i * 7);
  assert.deepEqual(decodeBytes(encodeBytes(big, "stdin")), big);
});

test("a bytes field of another type is refused, naming the field", () => {
  assert.throws(() => encodeRun({ cmd: ["x"], stdin: 5 }), { name: "TypeError", message: /^stdin: give a Uint8Array/ });
  assert.throws(() => encodeRun({ cmd: ["x"], files_in: [{ path: "a", content: [1] }] }), {
    message: /^files_in\[0\]\.content: .*not an array/,
  });
  const sub = { lang: "c", source: "", tests: [{ input: "1" }, { expected: {} }] };
  assert.throws(() => encodeSubmission(sub), { message: /^tests\[1\]\.expected: / });
});

test("only the schema's bytes fields are encoded, and the request is not changed", () => {
  const sub = {
    lang: "c",
    source: "int main;",
    tests: [{ input: "1", expected: null }],
    checker: { kind: "custom", program: { lang: "python3", source: "x" } },
    interactor: { lang: "python3", source: "y" },
    compile_options: ["-O2"],
  };
  const copy = structuredClone(sub);
  const out = encodeSubmission(sub);
  assert.deepEqual(sub, copy);
  assert.equal(out.source, "aW50IG1haW47");
  assert.deepEqual(out.tests, [{ input: "MQ==", expected: null }]);
  assert.deepEqual(out.checker, { kind: "custom", program: { lang: "python3", source: "eA==" } });
  assert.deepEqual(out.interactor, { lang: "python3", source: "eQ==" });
  assert.deepEqual(out.compile_options, ["-O2"]);
  assert.equal(JSON.stringify(encodeRun({ cmd: ["echo"] })), '{"cmd":["echo"]}');
});

test("results decode by their kind: a run's files, a submission's tests and runs", () => {
  const run = { kind: "run", status: "ok", stdout: "aGkK", stderr: "", files: [{ path: "f", content: "AP8=" }, { path: "g", error: "missing" }] };
  const info = decodeJobInfo({ job: "j", kind: "run", state: "done", result: run });
  assert.deepEqual(info.result.stdout, new TextEncoder().encode("hi\n"));
  assert.deepEqual(info.result.files[0].content, new Uint8Array([0, 255]));
  assert.deepEqual(info.result.files[1], { path: "g", error: "missing" });
  const sub = { kind: "submission", verdict: "AC", compile: run, tests: [{ index: 0, stdout: "MQ==", stderr: "" }], runs: [run] };
  const s = decodeJobInfo({ job: "k", kind: "submission", state: "done", result: sub }).result;
  assert.deepEqual(s.tests[0].stdout, new Uint8Array([49]));
  assert.deepEqual(s.compile.stdout, s.runs[0].stdout);
  assert.equal(decodeJobInfo({ job: "q", kind: "run", state: "queued" }).result, null);
});

test("without Node's Buffer (a browser) the same bytes go and come back", () => {
  // A child Node with Buffer removed before the module loads: the btoa/atob path.
  const script = `
    globalThis.Buffer = undefined;
    const { encodeBytes, decodeBytes } = await import(${JSON.stringify(new URL("../lib/bytes.js", import.meta.url).href)});
    const big = new Uint8Array(100000).map((_, i) => (i * 13) & 255);
    const b64 = encodeBytes(big, "stdin");
    const back = decodeBytes(b64);
    console.log(JSON.stringify([encodeBytes("hé", "stdin"), b64.length, back.length, back.every((v, i) => v === big[i])]));
  `;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.deepEqual(JSON.parse(out), ["aMOp", 133336, 100000, true]);
});
