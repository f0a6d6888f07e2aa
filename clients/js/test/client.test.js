// The client against a real daemon (with a bearer token): every operation of
// the native HTTP API, bytes both ways, idempotency keys, typed errors, aborts.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, SandboxdError, text } from "@sandboxd/client";
import { Daemon, instance } from "./daemon.js";

const TOKEN = "js-client-test-token";
let daemon;
let c;

before(async () => {
  daemon = await Daemon.start(instance("-js-api"), { SANDBOXD_HTTP_TOKEN: TOKEN });
  c = new Client(daemon.url, { token: TOKEN });
});

after(async () => {
  const rc = await daemon.close();
  assert.equal(rc, 0, "the daemon stopped cleanly");
});

/** The real fetch, with the requests it sent recorded. */
function recording() {
  const sent = [];
  const f = (url, init) => {
    sent.push({ url: String(url), method: init.method, headers: { ...init.headers } });
    return fetch(url, init);
  };
  return { sent, fetch: f };
}

test("run: a string and bytes in, bytes out, the request left as it was", async () => {
  const req = {
    cmd: ["sh", "-c", "cat; cp in.bin out.bin; echo oops >&2"],
    stdin: "héllo\n",
    files_in: [{ path: "in.bin", content: new Uint8Array([0, 255, 1, 10]) }],
    files_out: ["out.bin"],
  };
  const r = await c.run(req);
  assert.equal(r.kind, "run");
  assert.equal(r.status, "ok");
  assert.equal(r.exit_code, 0);
  assert.ok(r.stdout instanceof Uint8Array);
  assert.equal(text(r.stdout), "héllo\n");
  assert.equal(text(r.stderr), "oops\n");
  assert.equal(r.files[0].path, "out.bin");
  assert.deepEqual(r.files[0].content, new Uint8Array([0, 255, 1, 10]));
  assert.equal(req.stdin, "héllo\n");
  assert.ok(req.files_in[0].content instanceof Uint8Array);
});

test("run: limits are the daemon's (a time limit is a status, not an error)", async () => {
  const r = await c.run({ cmd: ["sh", "-c", "while :; do :; done"], limits: { cpu_time: 0.3 } });
  assert.equal(r.status, "time_limit");
});

test("submit: a judged submission with a verdict per test", async () => {
  const res = await c.submit({
    lang: "python3",
    source: "print(int(input()) * 2)",
    tests: [
      { input: "2\n", expected: "4\n" },
      { input: "3\n", expected: "7\n" },
    ],
  });
  assert.equal(res.kind, "submission");
  assert.equal(res.verdict, "WA");
  assert.deepEqual(
    res.tests.map((t) => t.verdict),
    ["AC", "WA"],
  );
  assert.equal(text(res.tests[1].stdout), "6\n");
});

test("startRun, job, wait: a queued run read back when done", async () => {
  const info = await c.startRun({ cmd: ["echo", "later"] });
  assert.ok(["queued", "running", "done"].includes(info.state), info.state);
  assert.equal((await c.job(info.job)).job, info.job);
  const done = await c.wait(info.job);
  assert.equal(done.state, "done");
  assert.equal(done.kind, "run");
  assert.equal(text(done.result.stdout), "later\n");
});

test("startSubmission and wait: the result decoded by its kind", async () => {
  const info = await c.startSubmission({ lang: "python3", source: "print(input())", tests: [{ input: "x", expected: "x" }] });
  const done = await c.wait(info.job);
  assert.equal(done.state, "done");
  assert.equal(done.result.verdict, "AC");
  assert.equal(text(done.result.tests[0].stdout), "x\n");
});

test("cancel: a running job ends cancelled; wait with a timeout returns it unfinished", async () => {
  const info = await c.startRun({ cmd: ["sleep", "30"], limits: { wall_time: 60 } });
  const early = await c.wait(info.job, { timeout: 0.2 });
  assert.ok(["queued", "running"].includes(early.state), early.state);
  await c.cancel(info.job);
  assert.equal((await c.wait(info.job)).state, "cancelled");
});

test("idempotency: keys are sent, the same key names the same job, another request under it is a conflict", async () => {
  const rec = recording();
  const k = new Client(daemon.url, { token: TOKEN, fetch: rec.fetch });
  const a = await k.startRun({ cmd: ["echo", "a"] });
  const b = await k.startRun({ cmd: ["echo", "a"] });
  assert.notEqual(a.job, b.job, "a fresh key per call");
  const keys = rec.sent.map((s) => s.headers["Idempotency-Key"]);
  assert.match(keys[0], /^[0-9a-f]{32}$/);
  assert.notEqual(keys[0], keys[1]);

  const key = `js-${keys[0]}`;
  const first = await k.startRun({ cmd: ["echo", "a"] }, { idempotencyKey: key });
  const again = await k.startRun({ cmd: ["echo", "a"] }, { idempotencyKey: key });
  assert.equal(again.job, first.job);
  await assert.rejects(k.startRun({ cmd: ["echo", "b"] }, { idempotencyKey: key }), (e) => {
    assert.ok(e instanceof SandboxdError);
    assert.equal(e.code, "conflict");
    assert.equal(e.status, 422);
    return true;
  });
  await k.startRun({ cmd: ["true"] }, { idempotencyKey: false });
  assert.equal(rec.sent.at(-1).headers["Idempotency-Key"], undefined);
  await assert.rejects(k.startRun({ cmd: ["true"] }, { idempotencyKey: "has space" }), {
    name: "TypeError",
    message: /^idempotencyKey: /,
  });
});

test("errors carry the wire code, the daemon's message and the HTTP status", async () => {
  await assert.rejects(c.run({ cmd: ["x"], limits: { memory: -1 } }), (e) => {
    assert.ok(e instanceof SandboxdError);
    assert.equal(e.code, "bad_request");
    assert.equal(e.status, 400);
    assert.match(e.detail, /limits\.memory/);
    assert.equal(e.message, `bad_request: ${e.detail}`);
    assert.equal(e.retryAfter, null);
    return true;
  });
  await assert.rejects(c.job("nope"), { code: "not_found", status: 404 });
  await assert.rejects(c.submit({ lang: "cobol", source: "", tests: [{}] }), { code: "bad_request", detail: /cobol/ });
  const anonymous = new Client(daemon.url);
  await assert.rejects(anonymous.languages(), { code: "unauthorized", status: 401 });
  await assert.rejects(new Client(daemon.url, { token: "wrong" }).status(), { code: "unauthorized" });
  assert.equal(await anonymous.health(), true, "/healthz needs no token");
  // Refused before anything is sent: the field named.
  await assert.rejects(c.run({ cmd: ["cat"], stdin: 5 }), { name: "TypeError", message: /^stdin: / });
  assert.throws(() => new Client("ftp://x"), { name: "TypeError", message: /http:\/\/host:port/ });
  assert.throws(() => new Client("http://x/?a=1"), { name: "TypeError", message: /no \?query/ });
  assert.equal(new Client("http://127.0.0.1:7070/prefix/").baseUrl, "http://127.0.0.1:7070/prefix");
});

test("languages, status, health and readiness", async () => {
  const langs = await c.languages();
  const py = langs.find((l) => l.id === "python3");
  assert.ok(py, JSON.stringify(langs.map((l) => l.id)));
  assert.equal(py.compiled, false);
  assert.equal(typeof py.name, "string");
  const st = await c.status();
  assert.equal(typeof st, "object");
  assert.ok("pools" in st, Object.keys(st).join(","));
  assert.equal(await c.health(), true);
  // Not ready (503) while the pool has no warm box (a cancelled run's box is
  // being reset): a value with the daemon's reason, not an error.
  let r = await c.ready();
  for (let i = 0; !r.ready && i < 120; i++) {
    assert.equal(typeof r.reason, "string", JSON.stringify(r));
    await new Promise((ok) => setTimeout(ok, 250));
    r = await c.ready();
  }
  assert.deepEqual(r, { ready: true });
});

test("an AbortSignal ends a waited call with its reason", async () => {
  const ac = new AbortController();
  const reason = new Error("the user closed the tab");
  // (The job itself runs on: aborting stops the waiting, cancel() stops a job.)
  const job = c.run({ cmd: ["sleep", "3"] }, { signal: ac.signal });
  setTimeout(() => ac.abort(reason), 300);
  await assert.rejects(job, (e) => e === reason);
  await assert.rejects(c.languages({ signal: AbortSignal.abort() }), { name: "AbortError" });
});

// --- the submission's event stream (POST /v1/submissions, Accept: text/event-stream) ---

const DOUBLER = { lang: "python3", source: "print(int(input()) * 2)" };

test("submitEvents: accepted, one test event per test, then the result, decoded", async () => {
  const rec = recording();
  const k = new Client(daemon.url, { token: TOKEN, fetch: rec.fetch });
  const tests = [1, 2, 3].map((n) => ({ input: `${n}\n`, expected: `${n * 2}\n` }));
  const events = [];
  for await (const ev of k.submitEvents({ ...DOUBLER, tests })) events.push(ev);
  assert.equal(rec.sent[0].headers.Accept, "text/event-stream");
  assert.equal(events[0].type, "accepted");
  assert.match(events[0].job, /\S/);
  const seen = events.filter((e) => e.type === "test");
  assert.deepEqual(seen.map((e) => e.test.index).sort(), [0, 1, 2]);
  assert.ok(seen.every((e) => e.test.verdict === "AC" && e.test.stdout instanceof Uint8Array));
  const last = events.at(-1);
  assert.equal(last.type, "result");
  assert.equal(last.result.verdict, "AC");
  assert.equal(text(last.result.tests[2].stdout), "6\n");
  assert.equal(events.length, 5);
  assert.equal((await c.job(events[0].job)).state, "done");
});

test("submitEvents: a refusal before the job rejects as submit does; the job's own failure is an error event", async () => {
  await assert.rejects(
    async () => {
      for await (const ev of c.submitEvents({ lang: "nosuch", source: "x", tests: [{}] })) void ev;
    },
    (e) => e instanceof SandboxdError && e.code === "bad_request" && e.status === 400,
  );
  // The one box busy: the queued submission's deadline passes after it was accepted.
  const busy = await c.startRun({ cmd: ["sleep", "5"], limits: { wall_time: 10 } });
  const seen = [];
  await assert.rejects(
    async () => {
      for await (const ev of c.submitEvents({ ...DOUBLER, tests: [{}], queue_deadline: 0.3 })) seen.push(ev.type);
    },
    (e) => e instanceof SandboxdError && e.code === "queue_deadline",
  );
  assert.deepEqual(seen, ["accepted"]);
  await c.cancel(busy.job);
});

test("submitEvents: leaving the loop early closes the stream, and the job goes on", async () => {
  let job = "";
  for await (const ev of c.submitEvents({ ...DOUBLER, tests: [{ input: "5\n", expected: "10\n" }] })) {
    assert.equal(ev.type, "accepted");
    job = ev.job;
    break;
  }
  const done = await c.wait(job);
  assert.equal(done.state, "done");
  assert.equal(done.result.verdict, "AC");
});

// --- the file store (PUT/HEAD/GET /v1/files/{sha256}) ---

import { createHash, randomBytes } from "node:crypto";

test("upload, hasFile, download: the hash computed here, sent once, named in a submission", async () => {
  const data = new Uint8Array([...randomBytes(1000), 0, 255]);
  const want = createHash("sha256").update(data).digest("hex");
  assert.equal(await c.hasFile(want), false);
  const rec = recording();
  const k = new Client(daemon.url, { token: TOKEN, fetch: rec.fetch });
  assert.equal(await k.upload(data), want);
  assert.deepEqual(rec.sent.map((s) => s.method), ["HEAD", "PUT"]);
  assert.equal(await k.upload(data.buffer.slice(0)), want, "an ArrayBuffer hashes the same");
  assert.deepEqual(rec.sent.map((s) => s.method), ["HEAD", "PUT", "HEAD"], "stored already: not sent again");
  assert.equal(await c.hasFile(want), true);
  assert.deepEqual(await c.download(want), data);

  const input = await c.upload("21\n");
  assert.equal(input, createHash("sha256").update("21\n").digest("hex"));
  const res = await c.submit({ ...DOUBLER, tests: [{ input_sha256: input, expected: "42\n" }] });
  assert.equal(res.verdict, "AC");
});

test("download: a file not stored is not_found; a malformed hash is refused before sending", async () => {
  const missing = createHash("sha256").update("never uploaded").digest("hex");
  await assert.rejects(c.download(missing), (e) => e instanceof SandboxdError && e.code === "not_found" && e.status === 404);
  await assert.rejects(c.hasFile("ABC"), TypeError);
});
