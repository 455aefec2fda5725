"""Parallel text for DEER: a reader for users' TSV/JSONL files and the corpora built from Debian packages.

- ``read_parallel(path)``: ``.tsv`` (source TAB target per line) or
  ``.jsonl`` (``{"source": ..., "target": ...}`` per line); ``.gz`` allowed.
- ``prepare_bible(out)``: Spanish (Reina-Valera 1909) -> English (King
  James) verse pairs from Debian's ``sword-text-sparv`` and
  ``sword-text-kjv`` (public domain SWORD zText modules, same versification,
  aligned by verse index).
- ``prepare_ding(out)``: German -> English sentences from the Ding
  dictionary (Debian ``trans-de-en``, GPL: fetched at run time, never
  vendored): pairs whose sides both end in . ! ? and have at least 4 words.
- ``default_corpus()``: the vendored public-domain split (short Bible
  verses, es -> en) used by ``pyprune demo`` and the tests.

Every prepared corpus has fixed train/valid/test splits (``split_of``).
"""
from __future__ import annotations

import gzip
import html
import json
import os
import re
import struct
import tempfile
import zlib
from typing import Iterable, Optional

from ..io import atomic_write_text
from .debian import unpack_deb

SPLITS = ("train", "valid", "test")
BIBLE = {"en": ("sword-text-kjv", "engKJV2006eb"), "es": ("sword-text-sparv", "spaRV1909eb")}
DING = ("trans-de-en", "usr/share/trans/de-en")


def _open(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def read_parallel(path: str) -> list[tuple[str, str]]:
    """(source, target) pairs from a .tsv or .jsonl file (optionally .gz); blank lines are skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: expected a parallel text file, got {path!r} (not found)")
    kind = path[:-3] if path.endswith(".gz") else path
    if not kind.endswith((".tsv", ".jsonl")):
        raise ValueError(f"path: expected a .tsv or .jsonl file (optionally .gz), got {path!r}")
    pairs = []
    with _open(path) as file:
        for number, line in enumerate(file, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if kind.endswith(".tsv"):
                parts = line.split("\t")
                if len(parts) != 2:
                    raise ValueError(f"{path}:{number}: expected 'source<TAB>target', got {len(parts)} fields")
                source, target = parts
            else:
                try:
                    row = json.loads(line)
                    source, target = row["source"], row["target"]
                except (ValueError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{number}: expected a JSON object with 'source' and 'target' "
                                     f"strings ({error})") from None
            if not isinstance(source, str) or not isinstance(target, str):
                raise ValueError(f"{path}:{number}: source and target must be strings")
            pairs.append((source.strip(), target.strip()))
    return pairs


def write_tsv(path: str, pairs: Iterable[tuple[str, str]]) -> None:
    """Write pairs as TSV atomically (tabs and newlines inside a side become spaces)."""
    clean = (" ".join(s.split()) + "\t" + " ".join(t.split()) for s, t in pairs)
    atomic_write_text(path, "".join(line + "\n" for line in clean))


def split_of(index: int, run: int = 10) -> str:
    """Fixed split by position: in consecutive runs of `run` items, of every 20 runs the 19th is valid,
    the 20th test (5% each)."""
    slot = (index // run) % 20
    return "valid" if slot == 18 else "test" if slot == 19 else "train"


# ---------------------------------------------------------------- SWORD zText
_DROP = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]+>")


def osis_text(markup: str) -> str:
    """Plain text of an OSIS verse: notes and headings dropped, other tags removed, spaces collapsed."""
    return " ".join(html.unescape(_TAG.sub(" ", _DROP.sub(" ", markup))).split()).replace(" ,", ",").replace(
        " .", ".").replace(" ;", ";").replace(" :", ":")


def read_ztext(directory: str) -> list[str]:
    """Every verse slot of a zText module (Old then New Testament), as OSIS markup ('' where empty)."""
    verses = []
    for testament in ("ot", "nt"):
        base = os.path.join(directory, testament)
        with open(base + ".bzs", "rb") as f:
            blocks = f.read()
        with open(base + ".bzv", "rb") as f:
            index = f.read()
        with open(base + ".bzz", "rb") as f:
            data = f.read()
        cache: dict[int, bytes] = {}
        for entry in range(len(index) // 10):
            block, offset, size = struct.unpack_from("<IIH", index, entry * 10)
            if size == 0:
                verses.append("")
                continue
            if block not in cache:
                start, length, _ = struct.unpack_from("<III", blocks, block * 12)
                cache = {block: zlib.decompress(data[start:start + length])}
            verses.append(cache[block][offset:offset + size].decode("utf-8", errors="replace"))
    return verses


def bible_pairs(spanish_dir: str, english_dir: str) -> list[tuple[str, str]]:
    """Aligned (Spanish, English) verses of two modules sharing the KJV versification."""
    es, en = read_ztext(spanish_dir), read_ztext(english_dir)
    if len(es) != len(en):
        raise ValueError(f"modules: expected the same versification, got {len(es)} and {len(en)} verse slots")
    pairs = []
    for a, b in zip(es, en):
        a, b = osis_text(a), osis_text(b)
        if a and b:
            pairs.append((a, b))
    return pairs


def prepare_bible(out: str, debs: Optional[dict] = None) -> str:
    """Write out/{train,valid,test}.tsv of es -> en verse pairs (built once); returns `out`."""
    if all(os.path.isfile(os.path.join(out, f"{s}.tsv")) for s in SPLITS):
        return out
    with tempfile.TemporaryDirectory() as work:
        dirs = {}
        for lang, (package, module) in BIBLE.items():
            root = unpack_deb(package, work, (debs or {}).get(lang))
            dirs[lang] = os.path.join(root, "usr/share/sword/modules/texts/ztext", module.lower())
            if not os.path.isdir(dirs[lang]):
                dirs[lang] = os.path.join(root, "usr/share/sword/modules/texts/ztext", module)
        pairs = bible_pairs(dirs["es"], dirs["en"])
    _write_splits(out, pairs)
    return out


def _write_splits(out: str, pairs: list[tuple[str, str]]) -> None:
    parts = {s: [] for s in SPLITS}
    for i, pair in enumerate(pairs):
        parts[split_of(i)].append(pair)
    for split in SPLITS:
        write_tsv(os.path.join(out, f"{split}.tsv"), parts[split])


# ---------------------------------------------------------------- Ding
_BRACKETS = re.compile(r"\{[^}]*\}|\[[^\]]*\]|\([^)]*\)")


def ding_pairs(lines: Iterable[str], min_words: int = 4) -> list[tuple[str, str]]:
    """German -> English sentence pairs from Ding's 'de1 | de2 :: en1 | en2' lines (deduplicated)."""
    seen, pairs = set(), []
    for line in lines:
        if line.startswith("#") or "::" not in line:
            continue
        german, english = line.split("::", 1)
        de_parts, en_parts = german.split("|"), english.split("|")
        if len(de_parts) != len(en_parts):
            continue
        for de, en in zip(de_parts, en_parts):
            de, en = " ".join(_BRACKETS.sub(" ", de).split()), " ".join(_BRACKETS.sub(" ", en).split())
            if not (de.endswith((".", "!", "?")) and en.endswith((".", "!", "?"))):
                continue
            if any(mark in side for side in (de, en) for mark in (";", " / ")):
                continue                 # lists of alternatives, not one sentence
            if len(de.split()) < min_words or len(en.split()) < min_words or (de, en) in seen:
                continue
            seen.add((de, en))
            pairs.append((de, en))
    return pairs


def prepare_ding(out: str, deb: Optional[str] = None) -> str:
    """Write out/{train,valid,test}.tsv of de -> en sentence pairs from Debian's trans-de-en (built once)."""
    if all(os.path.isfile(os.path.join(out, f"{s}.tsv")) for s in SPLITS):
        return out
    package, member = DING
    with tempfile.TemporaryDirectory() as work:
        root = unpack_deb(package, work, deb)
        with open(os.path.join(root, member), encoding="utf-8", errors="replace") as file:
            pairs = ding_pairs(file)
    _write_splits(out, pairs)
    return out


def default_corpus() -> str:
    """Directory of the vendored split (short es -> en Bible verses, public domain)."""
    return os.path.join(os.path.dirname(__file__), "corpora", "bible-es-en-short")


def read_split(directory: str, split: str) -> list[tuple[str, str]]:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    for name in (f"{split}.tsv", f"{split}.tsv.gz", f"{split}.jsonl", f"{split}.jsonl.gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return read_parallel(path)
    raise FileNotFoundError(f"{directory}: no {split}.tsv / {split}.jsonl (optionally .gz)")
