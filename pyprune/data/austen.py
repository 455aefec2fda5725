"""Jane Austen's six novels (public domain) from Debian's r-cran-janeaustenr, split for language modelling.

``prepare_austen()`` downloads the Debian package (``apt-get download``; no
root, no R), unpacks it (``dpkg-deb -x``), decodes the R dataset with
``pyprune.data.rserialize`` and writes ``train.txt``, ``valid.txt`` and
``test.txt`` (one paragraph per line) into the cache, atomically. The split
is fixed: each novel's paragraphs in consecutive runs of 20; of every ten
runs, the ninth goes to valid and the tenth to test.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

from ..io import atomic_write_text
from ..models import cache_dir
from .debian import unpack_deb
from .rserialize import read_lazyload

PACKAGE = "r-cran-janeaustenr"
DATASET = "usr/lib/R/site-library/janeaustenr/data/Rdata"
BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
SPLITS = ("train", "valid", "test")


def paragraphs(lines: list) -> list[str]:
    """Join runs of non-empty lines into paragraphs."""
    result, current = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            result.append(" ".join(current))
            current = []
    if current:
        result.append(" ".join(current))
    return result


def split_of(index: int, run: int = 20) -> str:
    slot = (index // run) % 10
    return "valid" if slot == 8 else "test" if slot == 9 else "train"


def austen_dir(cache: Optional[str] = None) -> str:
    return os.path.join(cache or cache_dir(), "austen")


def prepare_austen(cache: Optional[str] = None, deb: Optional[str] = None) -> str:
    """Directory with train/valid/test.txt (built on first use; `deb`: a local .deb instead of downloading)."""
    target = austen_dir(cache)
    if all(os.path.isfile(os.path.join(target, f"{s}.txt")) for s in SPLITS):
        return target
    with tempfile.TemporaryDirectory() as work:
        books = read_lazyload(os.path.join(unpack_deb(PACKAGE, work, deb), DATASET))
    texts = {s: [] for s in SPLITS}
    for book in BOOKS:
        for i, paragraph in enumerate(paragraphs(books[book])):
            texts[split_of(i)].append(paragraph)
    for split in SPLITS:
        atomic_write_text(os.path.join(target, f"{split}.txt"), "\n".join(texts[split]) + "\n")
    return target


def read_split(directory: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    with open(os.path.join(directory, f"{split}.txt")) as file:
        return file.read()
