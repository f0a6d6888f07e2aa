#!/usr/bin/env bash
# Install (or upgrade) sandboxd as a systemd service on this host, from this
# checkout.  Idempotent: run it again after `git pull` to upgrade, then
# `systemctl restart sandboxd` (or pass --restart).
#
#   scripts/install-systemd.sh [--find-links DIR] [--restart] [--no-start]
#
#   --find-links DIR  install Python packages from the wheels in DIR only
#                     (pip --no-index --find-links DIR): hosts without PyPI.
#                     pip's own PIP_* environment variables work too.
#   --restart         restart the service if it was already running (upgrade)
#   --no-start        install and enable, but do not start
#
# What it does:
#   * Debian packages the daemon needs, if missing: python3, python3-venv,
#     gcc + libc6-dev (the in-box agent is built with cc -static), libseccomp2.
#     Toolchains for the languages (g++, JDK, ...) are up to you: the daemon
#     serves the languages whose self-test passes (scripts/install.sh has the
#     full list).
#   * /opt/sandboxd/venv: a venv with this checkout and clients/python
#     installed (not editable: the service never runs code from the checkout).
#   * /etc/systemd/system/sandboxd.service, /etc/sysusers.d/sandboxd.conf (and
#     the `sandboxd` group), /etc/sandboxd/sandboxd.toml if absent (from
#     systemd/sandboxd.toml.example; an existing one is kept and checked),
#     /etc/sandboxd/sandboxd.toml.example (always the current reference).
#   * systemctl daemon-reload; systemctl enable --now sandboxd.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)

prefix=/opt/sandboxd
venv=$prefix/venv
unit_dir=/etc/systemd/system
conf_dir=/etc/sandboxd
pip_opts=()
restart=0
start=1
while [ $# -gt 0 ]; do
  case $1 in
    --find-links) [ $# -ge 2 ] || { echo "install-systemd.sh: --find-links needs a directory" >&2; exit 2; }
      pip_opts+=(--no-index --find-links "$2"); shift 2 ;;
    --find-links=*) pip_opts+=(--no-index --find-links "${1#*=}"); shift ;;
    --restart) restart=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-systemd.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install-systemd.sh: [${SECONDS}s] $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "install-systemd.sh: run as root (sandboxd creates namespaces and cgroups)" >&2
  exit 1
fi
if [ ! -d /run/systemd/system ]; then
  echo "install-systemd.sh: systemd is not running here (use scripts/start.sh instead)" >&2
  exit 1
fi

pkgs=(python3 python3-venv gcc libc6-dev libseccomp2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's interpreter, not whatever python3 comes first on PATH.
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  mkdir -p "$prefix"
  /usr/bin/python3 -m venv "$venv"
fi
say "installing sandboxd and sandboxd-client from $src into $venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check "${pip_opts[@]}")
# The build backend (setuptools, as pyproject.toml requires) once into the
# venv, then builds without an isolated environment per package: a third of
# the time on a slow host.
mapfile -t build_reqs < <("$venv/bin/python" -c \
  'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"], sep="\n")' \
  pyproject.toml)
"${pip[@]}" "${build_reqs[@]}"
# Local directories are always rebuilt and reinstalled, so an upgrade with an
# unchanged version number still replaces the code; dependencies as pinned
# in pyproject.toml.
"${pip[@]}" --no-build-isolation "$src" "$src/clients/python"

say "installing the unit, sysusers.d and the configuration"
install -d -m 0755 "$unit_dir" /etc/sysusers.d "$conf_dir"
install -m 0644 systemd/sysusers.d/sandboxd.conf /etc/sysusers.d/sandboxd.conf
systemd-sysusers /etc/sysusers.d/sandboxd.conf
install -m 0644 systemd/sandboxd.service "$unit_dir/sandboxd.service"
install -m 0644 systemd/sandboxd.toml.example "$conf_dir/sandboxd.toml.example"
if [ ! -e "$conf_dir/sandboxd.toml" ]; then
  say "creating $conf_dir/sandboxd.toml"
  # 0640: it may come to hold http_token.
  install -m 0640 systemd/sandboxd.toml.example "$conf_dir/sandboxd.toml"
fi
# A bad key stops the daemon at start: say so now, with the key named.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$venv/bin/sandboxd" config --config "$conf_dir/sandboxd.toml" >/dev/null

say "enabling and starting sandboxd"
systemctl daemon-reload
was_active=0
systemctl -q is-active sandboxd && was_active=1
systemctl enable -q sandboxd
if [ $start = 1 ]; then
  if [ $was_active = 1 ] && [ $restart = 1 ]; then
    say "restarting sandboxd (running jobs get drain_timeout to finish)"
    systemctl restart sandboxd
  else
    systemctl start sandboxd
  fi
fi
if [ $was_active = 1 ] && [ $restart = 0 ]; then
  say "sandboxd keeps running the previous code until: systemctl restart sandboxd"
fi
systemctl --no-pager --lines=0 status sandboxd || true
