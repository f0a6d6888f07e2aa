#!/usr/bin/env bash
# Install everything and run the whole test suite (as root, real kernel
# features: namespaces, cgroups, seccomp; a qemu VM for cgroup v2).
# Two pytest runs, each test in one of them: the unit suite (tests/unit: pure
# logic, seconds, needs no root) first, so a broken schema or checker fails
# before the long root suite starts; then everything else.  Arguments go to
# the second run (e.g. scripts/test.sh tests/sandbox/test_box.py -k seccomp),
# which names its 25 slowest tests, so every CI log shows where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
[ -x tests/vm/setup.sh ] && tests/vm/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest -q -ra tests/unit
exec .venv/bin/pytest -q -ra --durations=25 --ignore=tests/unit "$@"
