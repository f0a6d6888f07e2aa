// Retries against a real daemon that refuses (a full queue: 429 queue_full
// with Retry-After) and that stops and comes back (refused connections): the
// call completes, its job runs once, every attempt carries the same key, and
// the caller's deadline and AbortSignal bound it.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, SandboxdError, text } from "@sandboxd/client";
import { Daemon, instance } from "./daemon.js";

let daemon;

before(async () => {
  // One box and room for one waiting run: a third job is refused with 429.
  daemon = await Daemon.start(instance("-js-retry"), { SANDBOXD_QUEUE_DEPTH: "1", SANDBOXD_DRAIN_TIMEOUT: "1" });
});

after(async () => {
  await daemon.close();
});

/** The real fetch; each attempt's time, key and outcome recorded. */
function recording() {
  const sent = [];
  const f = async (url, init) => {
    const rec = { at: performance.now() / 1000, key: init.headers["Idempotency-Key"], status: null, after: null, error: null };
    sent.push(rec);
    try {
      const resp = await fetch(url, init);
      rec.status = resp.status;
      rec.after = resp.headers.get("Retry-After");
      return resp;
    } catch (e) {
      rec.error = e;
      throw e;
    }
  };
  return { sent, fetch: f };
}

const until = async (cond, what) => {
  for (let i = 0; i < 600 && !cond(); i++) await new Promise((ok) => setTimeout(ok, 50));
  assert.ok(cond(), what);
};

/** Fill the queue: one run in the box, one waiting; returns their ids. */
async function fill(c) {
  // The daemon's Retry-After is its queue's measured drain time (at least
  // 1 s; 60 s for a queue that has not moved): a few quick runs first make it 1 s.
  for (let i = 0; i < 5; i++) await c.run({ cmd: ["true"] });
  const sleep = { cmd: ["sleep", "30"], limits: { wall_time: 60 } };
  const running = await c.startRun(sleep);
  for (let i = 0; i < 100 && (await c.job(running.job)).state !== "running"; i++) {
    await new Promise((ok) => setTimeout(ok, 50));
  }
  const waiting = await c.startRun(sleep);
  return [running.job, waiting.job];
}

async function drain(c, jobs) {
  for (const j of jobs) await c.cancel(j);
  for (const j of jobs) assert.equal((await c.wait(j)).state, "cancelled");
}

test("429 queue_full: retried after Retry-After with the same key until the queue has room", async () => {
  const plain = new Client(daemon.url);
  const blockers = await fill(plain);
  const rec = recording();
  const c = new Client(daemon.url, { fetch: rec.fetch });
  const call = c.run({ cmd: ["echo", "through"] });
  try {
    await until(() => rec.sent.filter((s) => s.status === 429).length >= 2, "refused twice, retried");
  } finally {
    await drain(plain, blockers);
  }
  const r = await call;
  assert.equal(text(r.stdout), "through\n");
  const statuses = rec.sent.map((s) => s.status);
  assert.equal(statuses.at(-1), 200);
  assert.ok(statuses.slice(0, -1).every((s) => s === 429), JSON.stringify(statuses));
  assert.equal(new Set(rec.sent.map((s) => s.key)).size, 1, "one key on every attempt");
  // No retry came sooner than the refusal before it asked.  (A lower bound
  // only: a slow machine makes the gaps longer, never shorter.)
  for (let i = 1; i < rec.sent.length; i++) {
    const asked = Number(rec.sent[i - 1].after);
    assert.ok(asked >= 1, `Retry-After ${rec.sent[i - 1].after}`);
    assert.ok(rec.sent[i].at - rec.sent[i - 1].at >= asked - 0.05, JSON.stringify(rec.sent));
  }
});

test("the deadline ends the retries with the refusal itself; retry: false sends once", async () => {
  const plain = new Client(daemon.url);
  const blockers = await fill(plain);
  try {
    for (const retry of [{ deadline: 0.5 }, false]) {
      const rec = recording();
      const c = new Client(daemon.url, { retry, fetch: rec.fetch });
      await assert.rejects(c.run({ cmd: ["true"] }), (e) => {
        assert.ok(e instanceof SandboxdError);
        assert.equal(e.code, "queue_full");
        assert.equal(e.status, 429);
        assert.ok(e.retryAfter >= 1, String(e.retryAfter));
        return true;
      });
      // Retry-After (at least 1 s) is past the deadline (0.5 s): no second attempt.
      assert.equal(rec.sent.length, 1);
    }
  } finally {
    await drain(plain, blockers);
  }
});

test("a call spanning a daemon restart completes, and its job runs once", async () => {
  assert.equal(await daemon.stop(), 0);
  const rec = recording();
  const c = new Client(daemon.url, { fetch: rec.fetch });
  const call = c.run({ cmd: ["echo", "again"] });
  await until(() => rec.sent.length >= 2, "refused and retried");
  assert.ok(rec.sent[0].error instanceof TypeError, "fetch failed: no daemon");
  await daemon.launch();
  const r = await call;
  assert.equal(r.status, "ok");
  assert.equal(text(r.stdout), "again\n");
  assert.equal(new Set(rec.sent.map((s) => s.key)).size, 1);
  const metrics = await (await fetch(`${daemon.url}/metrics`)).text();
  const runs = [...metrics.matchAll(/^sandboxd_run_seconds_count\{[^}]*\} (\S+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
  assert.equal(runs, 1, "the restarted daemon ran it once");
});

test("unreachable: the deadline makes it final as disconnected; an abort ends the wait at once", async () => {
  assert.equal(await daemon.stop(), 0);
  try {
    const c = new Client(daemon.url, { retry: { deadline: 0.3 } });
    await assert.rejects(c.languages(), (e) => {
      assert.ok(e instanceof SandboxdError);
      assert.equal(e.code, "disconnected");
      assert.equal(e.status, null);
      assert.ok(e.cause instanceof TypeError);
      return true;
    });
    // Without a key, a POST that may have reached the daemon is not sent again.
    const rec = recording();
    const once = new Client(daemon.url, { fetch: rec.fetch });
    await assert.rejects(once.run({ cmd: ["true"] }, { idempotencyKey: false }), { code: "disconnected" });
    assert.equal(rec.sent.length, 1);

    const ac = new AbortController();
    const rec2 = recording();
    const waiting = new Client(daemon.url, { retry: { deadline: 600, first: 30 }, fetch: rec2.fetch });
    const call = waiting.run({ cmd: ["true"] }, { signal: ac.signal });
    await until(() => rec2.sent.length >= 1 && rec2.sent[0].error !== null, "first attempt refused");
    const reason = new Error("stop");
    ac.abort(reason);
    await assert.rejects(call, (e) => e === reason);
    assert.equal(rec2.sent.length, 1, "no attempt after the abort");
  } finally {
    await daemon.launch();
  }
});
