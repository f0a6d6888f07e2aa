"""Instance names of the daemons and engines the tests start.

Several test sessions may run on one host at once (two checkouts, a developer
next to CI): TEST_INSTANCE_TAG gives each session names of its own, so that
one session's leak check and crash sweeps never see another's instances.
"""

from __future__ import annotations

import os

PREFIX = "pytest" + os.environ.get("TEST_INSTANCE_TAG", "")


def inst(suffix: str = "") -> str:
    """This session's instance name ending in `suffix` (e.g. "-compat")."""
    return PREFIX + suffix
