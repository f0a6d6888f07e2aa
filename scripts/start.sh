#!/usr/bin/env bash
# Start the daemon on the embedded default rootfs (the host's /usr, read-only),
# detached, unless one already answers; then show it working with one run.
# Under systemd, the unit in systemd/ is the way (see README, operations).
#
# SANDBOXD_HTTP (a daemon setting) is the address to check and serve;
# SANDBOXD_LOG (this script's own, ignored by the daemon) is the log file.
# The daemon writes and removes its own pid file (run_dir/sandboxd.pid).
set -euo pipefail
cd "$(dirname "$0")/.."

addr=${SANDBOXD_HTTP:-127.0.0.1:7070}
log=${SANDBOXD_LOG:-/var/log/sandboxd.log}
ready() { .venv/bin/python - "$addr" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}/readyz", timeout=1)
except OSError:
    sys.exit(1)
PY
}

if ! ready; then
  setsid .venv/bin/sandboxd serve --http "$addr" >>"$log" 2>&1 < /dev/null &
  pid=$!
  # Start-up self-tests every language (compiles Java, Go, Rust...): allow a
  # minute, but stop at once if the daemon exits (a bad setting, a taken socket).
  for _ in $(seq 600); do
    ready && break
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" && rc=0 || rc=$?
      echo "start.sh: the daemon exited at once (status $rc); see $log:" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  ready || { echo "start.sh: the daemon did not come up within a minute; see $log" >&2; tail -20 "$log" >&2; exit 1; }
  echo "sandboxd: serving on /run/sandboxd/sandboxd.sock and http://$addr (pid $pid, log $log)"
fi
# A first judged submission through the daemon.
.venv/bin/sandboxd submit --lang c --tests examples/aplusb-tests examples/aplusb.c
