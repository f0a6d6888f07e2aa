// Type-level tests of index.d.ts (tsc --noEmit, `npm run typecheck`): the
// API used as a caller would, and what a caller must not be able to write
// (each @ts-expect-error fails the check if the line were accepted).

import { Client, DEFAULT_RETRY, FINAL_STATES, SandboxdError, text } from "@sandboxd/client";
import type { JobInfo, JobState, RunResult, SubmissionResult, Verdict } from "@sandboxd/client";

export async function uses(signal: AbortSignal): Promise<void> {
  const c = new Client("http://127.0.0.1:7070", { token: "t", retry: { deadline: 5 } });
  new Client("http://127.0.0.1:7070", { retry: false });
  const r: RunResult = await c.run({ cmd: ["cat"], stdin: "hi", files_in: [{ path: "a", content: new Uint8Array(1) }] });
  const out: Uint8Array = r.stdout;
  const s: string = text(out);
  const sub: SubmissionResult = await c.submit(
    { lang: "c", source: "int main(){}", tests: [{ input: "1", expected: null }], checker: { kind: "float" } },
    { idempotencyKey: "k-1", signal },
  );
  const v: Verdict = sub.verdict;
  const info: JobInfo = await c.startRun({ cmd: ["true"] }, { idempotencyKey: false });
  const state: JobState = (await c.wait(info.job, { timeout: 1, signal })).state;
  await c.cancel(info.job);
  const ok: boolean = await c.health();
  const ready: boolean = (await c.ready()).ready;
  const ids: string[] = (await c.languages()).map((l) => l.id);
  const final: boolean = FINAL_STATES.has(state);
  const deadline: number = DEFAULT_RETRY.deadline;
  try {
    await c.job("x");
  } catch (e) {
    if (e instanceof SandboxdError) {
      const code: string = e.code;
      const status: number | null = e.status;
      const after: number | null = e.retryAfter;
      void [code, status, after];
    }
  }
  void [s, v, ok, ready, ids, final, deadline];

  // @ts-expect-error cmd is required
  await c.run({ stdin: "x" });
  // @ts-expect-error bytes are a Uint8Array or a string
  await c.run({ cmd: ["x"], stdin: 5 });
  // @ts-expect-error outputs are bytes, not strings
  const wrong: string = r.stderr;
  // @ts-expect-error an unknown checker kind
  await c.submit({ lang: "c", source: "", tests: [{}], checker: { kind: "fuzzy" } });
  // @ts-expect-error a submission needs tests
  await c.submit({ lang: "c", source: "" });
  // @ts-expect-error the key is a string or false
  await c.startRun({ cmd: ["x"] }, { idempotencyKey: true });
  void wrong;
}

// The implementation (lib/*.js, typed by its JSDoc) is what index.d.ts says:
// each export assigned to the declared type, so a drift fails the check.
import * as declared from "@sandboxd/client";
import * as client from "../lib/client.js";
import * as errors from "../lib/errors.js";
import * as retry from "../lib/retry.js";
import * as bytes from "../lib/bytes.js";

export const implemented: [
  typeof declared.Client,
  typeof declared.SandboxdError,
  typeof declared.text,
  typeof declared.FINAL_STATES,
  typeof declared.DEFAULT_RETRY,
] = [client.Client, errors.SandboxdError, bytes.text, client.FINAL_STATES, retry.DEFAULT_RETRY];

// Live sessions, as a caller types them.
import { session, type SessionEnd, type SessionStart } from "@sandboxd/client";

async function terminal(): Promise<SessionEnd> {
  const start: SessionStart = { language: "python3", source: "print(input())", limits: { cpu_time: 1 } };
  const s = await session("http://127.0.0.1:7070", start, {
    token: "t",
    onOutput: (stream: "stdout" | "stderr", data: Uint8Array) => void [stream, data.length],
  });
  await s.started;
  await s.write("hi\n");
  s.eof();
  s.signal("INT");
  return s.result;
}
void terminal;

// The submission's event stream and the file store, as a caller types them.
import type { SubmissionEvent, TestResult } from "@sandboxd/client";

async function follow(c: Client, signal: AbortSignal): Promise<string> {
  const sha: string = await c.upload(new Uint8Array([1, 2]), { signal });
  const there: boolean = await c.hasFile(sha);
  const back: Uint8Array = await c.download(sha);
  void [there, back];
  const tests: TestResult[] = [];
  for await (const ev of c.submitEvents({ lang: "c", source_sha256: sha, tests: [{ input_sha256: sha }] }, { signal })) {
    const e: SubmissionEvent = ev;
    if (e.type === "accepted") void e.job.length;
    else if (e.type === "test") tests.push(e.test);
    else return e.result.verdict;
  }
  // @ts-expect-error -- a hash is a string, not bytes
  await c.submit({ lang: "c", source_sha256: new Uint8Array(1), tests: [{}] });
  return "none";
}
void follow;
