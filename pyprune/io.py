"""Files written atomically: a crash never leaves a half-written result."""
from __future__ import annotations

import os
import tempfile
from typing import Callable, IO


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside `path`, then rename it over `path`.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask), not the
    owner-only ones of a temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(handle, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda file: file.write(text))


def atomic_torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch
    atomic_write(path, lambda file: torch.save(obj, file), binary=True)
