#!/usr/bin/env bash
# The pinned packages of clients/js: typescript (the type check) and `ws`
# (live sessions in Node < 22, which has no global WebSocket), with `npm ci`
# from the committed package-lock.json, only when that lock changed since the
# last install: offline and instant when they are in place.
set -euo pipefail
cd "$(dirname "$0")"
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "clients/js: Node.js 18 or newer needed (fetch), found $(node --version)" >&2
  exit 1
fi
stamp=node_modules/.sandboxd-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -x node_modules/.bin/tsc ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
echo "$want" >"$stamp"
