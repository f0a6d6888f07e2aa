// Live sessions against a real daemon with a bearer token: Node 20 has no
// global WebSocket, so this exercises the `ws` package path; the token goes
// as a header (and, as a browser would, in the start message).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { SandboxdError, session, sessionUrl, text } from "@sandboxd/client";
import { Daemon, instance } from "./daemon.js";

const TOKEN = "js-session-test-token";
let daemon;

before(async () => {
  daemon = await Daemon.start(instance("-js-session"), { SANDBOXD_HTTP_TOKEN: TOKEN });
});

after(async () => {
  const rc = await daemon.close();
  assert.equal(rc, 0, "the daemon stopped cleanly");
});

/** A session whose output is collected. */
async function open(start, token = TOKEN) {
  const out = { stdout: "", stderr: "" };
  const s = await session(daemon.url, start, {
    token,
    onOutput: (stream, data) => {
      out[stream] += text(data);
    },
  });
  return { s, out };
}

test("sessionUrl: ws:// and wss:// beside the base URL", () => {
  assert.equal(sessionUrl("http://127.0.0.1:7070"), "ws://127.0.0.1:7070/v1/sessions");
  assert.equal(sessionUrl("https://judge.example.org/api/"), "wss://judge.example.org/api/v1/sessions");
});

test("echo: stdin in, stdout and stderr out, eof, the result", async () => {
  const src = "import sys\nfor line in sys.stdin:\n    print(line.upper(), end='', flush=True)\nprint('done', file=sys.stderr)\n";
  const { s, out } = await open({ language: "python3", source: src });
  await s.started;
  await s.write("hello\n");
  await s.write(new TextEncoder().encode("bytes\n"));
  s.eof();
  const end = await s.result;
  assert.equal(out.stdout, "HELLO\nBYTES\n");
  assert.equal(out.stderr, "done\n");
  assert.equal(end.reason, "exit");
  assert.equal(end.result.status, "ok");
  assert.ok(end.result.stdout instanceof Uint8Array);
});

test("a compiled C program: the compile result, then a signal", async () => {
  const src = "#include <stdio.h>\n#include <unistd.h>\nint main(void){puts(\"up\");fflush(stdout);pause();return 0;}\n";
  const { s, out } = await open({ language: "c", source: src });
  await s.started;
  assert.equal(s.compiled?.status, "ok");
  while (!out.stdout.includes("up")) await new Promise((ok) => setTimeout(ok, 20));
  s.signal("TERM");
  const end = await s.result;
  assert.equal(end.result.status, "signaled");
  assert.equal(end.result.signal, 15);
});

test("kill and close", async () => {
  const { s } = await open({ language: "python3", source: "import time\nprint('x', flush=True)\ntime.sleep(60)\n" });
  await s.started;
  s.kill();
  assert.equal((await s.result).reason, "killed");
  const second = await open({ language: "python3", source: "import time\ntime.sleep(60)\n" });
  await second.s.started;
  second.s.close();
  await assert.rejects(second.s.result, (e) => e instanceof SandboxdError && e.code === "disconnected");
});

test("refusals are SandboxdErrors with the daemon's code", async () => {
  const bad = await open({ language: "python3", source: "1", limits: { memory: 1 } });
  await assert.rejects(bad.s.result, (e) => e.code === "bad_request" && e.detail.includes("limits.memory"));
  const wrong = await open({ language: "python3", source: "1" }, "wrong-token");
  await assert.rejects(wrong.s.result, (e) => e.code === "unauthorized");
  await assert.rejects(wrong.s.started, (e) => e.code === "unauthorized");
});
