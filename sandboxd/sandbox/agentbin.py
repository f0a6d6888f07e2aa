"""Build (once) and locate the agent binary.

The agent is compiled from the C source shipped in the package, statically,
so it depends on nothing in the host or the box rootfs.  The binary is named
by the hash of its source: an upgrade never runs a stale agent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from sandboxd.config import DEFAULT

DEFAULT_DIR = Path(os.environ.get("SANDBOXD_STATE_DIR", DEFAULT.state_dir))
CFLAGS = ["-O2", "-Wall", "-Wextra", "-static", "-s"]


def source() -> bytes:
    return resources.files("sandboxd").joinpath("sandbox/agent/agent.c").read_bytes()


def ensure(state_dir: Path = DEFAULT_DIR) -> Path:
    src = source()
    digest = hashlib.sha256(src + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = state_dir / f"agent-{digest}"
    if target.exists():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("building the sandboxd agent needs a C compiler (apt-get install gcc libc6-dev)")
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    with tempfile.TemporaryDirectory(dir=state_dir) as tmp:
        c = Path(tmp) / "agent.c"
        c.write_bytes(src)
        out = Path(tmp) / "agent"
        r = subprocess.run([cc, *CFLAGS, "-o", str(out), str(c)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building the sandboxd agent failed:\n{r.stderr}")
        out.chmod(0o755)
        os.replace(out, target)  # atomic: concurrent builders agree on the result
    return target
