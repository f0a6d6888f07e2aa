// A real `sandboxd serve` for the tests (as tests/daemon_util.py starts one):
// its own instance name, socket, job store and loopback port.  Run from
// pytest (tests/clients/test_js_client.py) or alone with `npm test` as root
// in a checkout with its .venv.

import { spawn } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.SANDBOXD_TEST_PYTHON || join(REPO, ".venv/bin/python");

/** The test session's instance name ending in `suffix` (tests/instances.py). */
export function instance(suffix) {
  return `pytest${process.env.TEST_INSTANCE_TAG ?? ""}${suffix}`;
}

async function freePort() {
  const srv = createServer();
  await new Promise((ok) => srv.listen(0, "127.0.0.1", ok));
  const { port } = srv.address();
  await new Promise((ok) => srv.close(ok));
  return port;
}

export class Daemon {
  /**
   * @param {string} name instance name
   * @param {Record<string, string>} env settings as SANDBOXD_* variables
   */
  static async start(name, env = {}) {
    const d = new Daemon(name, await freePort(), env);
    await d.launch();
    return d;
  }

  constructor(name, port, env) {
    this.name = name;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.dir = mkdtempSync(join(tmpdir(), `sandboxd-${name}-`));
    this.args = [
      "-m", "sandboxd", "serve", "--config", "/dev/null", "--instance", name,
      "--socket", join(this.dir, "sandboxd.sock"), "--http", `127.0.0.1:${port}`,
      "--pool-size", "1", "--pid-file", join(this.dir, "sandboxd.pid"),
    ];
    this.env = {
      ...process.env,
      PYTHONPATH: [REPO, process.env.PYTHONPATH].filter(Boolean).join(":"),
      SANDBOXD_SELFTEST: "false",
      SANDBOXD_JOB_STORE: join(this.dir, "jobs.sqlite3"),
      ...env,
    };
    this.proc = null;
  }

  /** Start (again: same instance, port and job store) and wait until ready. */
  async launch(timeout = 120) {
    const log = openSync(join(this.dir, "log"), "a");
    this.proc = spawn(PYTHON, this.args, { env: this.env, stdio: ["ignore", log, log] });
    const exited = new Promise((ok) => this.proc.once("exit", ok));
    this.exited = exited;
    const end = Date.now() + timeout * 1000;
    for (;;) {
      if (this.proc.exitCode !== null || Date.now() > end) {
        throw new Error(`daemon ${this.name} did not start:\n${this.output()}`);
      }
      try {
        if ((await fetch(`${this.url}/readyz`)).status === 200) return;
      } catch {
        // not listening yet
      }
      await new Promise((ok) => setTimeout(ok, 100));
    }
  }

  output() {
    return readFileSync(join(this.dir, "log"), "utf8");
  }

  /** SIGTERM (the daemon drains and removes its cgroups); its exit code. */
  async stop(timeout = 60) {
    if (this.proc === null) return null;
    const proc = this.proc;
    this.proc = null;
    if (proc.exitCode !== null) return proc.exitCode;
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeout * 1000);
    await this.exited;
    clearTimeout(timer);
    return proc.exitCode;
  }

  async close() {
    const rc = await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
    return rc;
  }
}
