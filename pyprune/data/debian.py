"""Debian packages as data: download without installing (no root) and unpack."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional


def unpack_deb(package: str, work: str, deb: Optional[str] = None) -> str:
    """Unpack `package` into `work`/<package> (``apt-get download`` unless `deb` is a local .deb); returns it."""
    if deb is None:
        if shutil.which("apt-get") is None:
            raise FileNotFoundError(f"apt-get is needed to fetch {package} (or pass a downloaded .deb)")
        subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
        deb = next(os.path.join(work, f) for f in os.listdir(work) if f.startswith(package) and f.endswith(".deb"))
    root = os.path.join(work, package)
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root
