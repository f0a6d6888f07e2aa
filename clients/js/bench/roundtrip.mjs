// What the client adds to a call: sequential `run(["true"])` round trips
// through the client against the same requests sent with bare fetch (JSON,
// a fresh Idempotency-Key like the client's, no retry logic, no base64 of
// results), interleaved in the same run against one real daemon, so the
// ratio holds on a noisy machine.  "client, no key" shows what the daemon's
// key handling costs (a fingerprint and a durable record per keyed job).
//
//   node bench/roundtrip.mjs [N]        (as root in a checkout with its .venv)

import { Client } from "@sandboxd/client";
import { Daemon, instance } from "../test/daemon.js";

const N = Number(process.argv[2] ?? 200);
const d = await Daemon.start(instance("-js-bench"));
const c = new Client(d.url);
const req = { cmd: ["true"], stdin: "x".repeat(1024) };
const bare = async () => {
  const body = JSON.stringify({ cmd: ["true"], stdin: btoa("x".repeat(1024)) });
  const headers = { "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID().replaceAll("-", "") };
  const r = await fetch(`${d.url}/v1/runs?wait=true`, { method: "POST", headers, body });
  return JSON.parse(await r.text());
};
const viaClient = () => c.run(req);
const noKey = () => c.run(req, { idempotencyKey: false });
const ways = [["bare", bare], ["client", viaClient], ["client, no key", noKey]];
const p = (xs, q) => [...xs].sort((a, b) => a - b)[Math.floor(q * (xs.length - 1))];
try {
  for (let i = 0; i < 20; i++) for (const [, f] of ways) await f(); // warm up
  const times = Object.fromEntries(ways.map(([name]) => [name, []]));
  for (let i = 0; i < N; i++) {
    // A rotating order: no way always runs right after another.
    for (let j = 0; j < ways.length; j++) {
      const [name, f] = ways[(i + j) % ways.length];
      const t = performance.now();
      await f();
      times[name].push(performance.now() - t);
    }
  }
  for (const [k] of ways) console.log(`${k.padEnd(14)} p50 ${p(times[k], 0.5).toFixed(2)} ms  p99 ${p(times[k], 0.99).toFixed(2)} ms`);
  console.log(`client/bare p50 ratio ${(p(times.client, 0.5) / p(times.bare, 0.5)).toFixed(3)} (N=${N})`);
} finally {
  await d.close();
}
