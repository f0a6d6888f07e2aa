#!/usr/bin/env bash
# Install everything and run the whole test suite (as root, real kernel
# features: namespaces, cgroups, seccomp; a qemu VM for cgroup v2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
[ -x tests/vm/setup.sh ] && tests/vm/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/pytest -q -ra "$@"
