"""The daemon's peak RSS growth for one run returning 64 MiB of files out (issue 13's files-out load).

A fresh `sandboxd serve` (memory_budget 256 MiB, pool 2); one run writes
4 files of 16 MiB and asks for them back, sent four ways in turn: without
waiting (no reply body), waited with a msgpack reply, with a JSON reply
(base64), msgpack again.  Prints the growth of VmHWM (reset before each) per
way: what the result path holds at once beyond the budget, which does not
count results.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/files_out_rss.py
"""

from __future__ import annotations

import json
import time
import urllib.request

import memory_budget as mb
import msgspec

MiB = 1 << 20
MAKE = "for i in 1 2 3 4; do head -c 16777216 /dev/zero > f$i; done"
JOB = {"cmd": ["sh", "-c", MAKE], "files_out": ["f1", "f2", "f3", "f4"]}
JOB["limits"] = {"memory": 256 * MiB, "file_size": 16 * MiB}


def send(d: mb.Daemon, how: str) -> int:
    if how == "wait=false":
        status = d.post("/v1/runs?wait=false", msgspec.msgpack.encode(JOB))
        time.sleep(6)  # (the run and the saving of its result)
        return status
    msgpack = how == "msgpack"
    data = msgspec.msgpack.encode(JOB) if msgpack else json.dumps(JOB).encode()
    ctype = "application/msgpack" if msgpack else "application/json"
    req = urllib.request.Request(d.url + "/v1/runs", data=data, headers={"Content-Type": ctype, "Accept": ctype})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
        return int(r.status)


def main() -> None:
    d = mb.Daemon(256 * MiB, "files-out")
    try:
        print("| sent | HTTP | peak RSS growth |\n|---|---|---|")
        for how in ("wait=false", "msgpack", "json", "msgpack"):
            with open(f"/proc/{d.proc.pid}/clear_refs", "w") as f:
                f.write("5")  # (VmHWM reset to the current RSS)
            time.sleep(0.3)
            idle = d.peak_rss()
            status = send(d, how)
            time.sleep(0.5)
            print(f"| {how} | {status} | {(d.peak_rss() - idle) / MiB:.0f} MiB |", flush=True)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
