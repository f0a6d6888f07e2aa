#!/usr/bin/env bash
# Install everything sandboxd needs on a fresh Debian 12 host (as root),
# idempotently: system packages, a venv with pinned Python deps in .venv,
# and the in-box agent (compiled once, cached by source hash).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sandboxd creates namespaces and cgroups)" >&2
  exit 1
fi

# gcc/libc6-dev: builds the static agent and serves the c/cpp languages;
# g++ for cpp; libseccomp2 is what pyseccomp loads; libcap2-bin (capsh) runs a test without CAP_MKNOD; bubblewrap is a benchmark baseline;
# the JDK, Node.js, Go and Rust serve those languages on the host rootfs;
# redis-server is the fleet's shared state (tests start their own instances);
# chromium + chromium-driver: the tests drive the web pages in a real browser (selenium, the [test] extra).
pkgs=(gcc g++ libc6-dev libseccomp2 libcap2-bin python3 python3-venv iproute2 bubblewrap
  openjdk-17-jdk-headless nodejs golang-go rustc mmdebstrap redis-server chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm installs clients/js's pinned dev tools; a Node.js that ships its own npm
# (not Debian's) keeps it, since Debian's npm package would clash with it.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No package may start a service here (redis-server's would take port 6379):
  # sandboxd and the tests start what they need themselves.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's interpreter, not a pyenv shim that may be first on PATH.
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]' -e clients/python
# clients/js: its type checker, pinned by its package-lock.json (npm ci, once per lock).
clients/js/install.sh
# Build the agent now so the first run does not pay for it.
.venv/bin/python -c 'from sandboxd.sandbox import agentbin; print("agent:", agentbin.ensure())'
