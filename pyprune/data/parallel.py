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

from ..io import atomic_write, atomic_write_text
from .debian import unpack_deb

SPLITS = ("train", "valid", "test")
BIBLE = {"en": ("sword-text-kjv", "engKJV2006eb"), "es": ("sword-text-sparv", "spaRV1909eb"),
         "web": ("sword-text-web", "engWEB2015eb")}
BIBLE_PAIRS = {"es-en": ("es", "en"), "kjv-web": ("en", "web")}
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
    """Write pairs as TSV atomically (tabs and newlines inside a side become spaces); a `path` ending in .gz
    is gzipped without a timestamp, so the same pairs give the same bytes."""
    clean = (" ".join(s.split()) + "\t" + " ".join(t.split()) for s, t in pairs)
    text = "".join(line + "\n" for line in clean)
    if path.endswith(".gz"):
        atomic_write(path, lambda file: file.write(gzip.compress(text.encode("utf-8"), mtime=0)), binary=True)
    else:
        atomic_write_text(path, text)


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


_CHAPTER = re.compile(r'<chapter\b[^>]*\bosisID="([^"]+)"')


def keyed_verses(directory: str) -> dict[str, str]:
    """Plain text of every non-empty verse of a zText module by OSIS reference ("Gen.1.1").

    A module's verse slots follow its versification: each chapter's heading
    slot (holding the ``<chapter osisID="Gen.1">`` marker), then its verses.
    Numbering the slots after each marker gives the references without a
    versification table, so modules of different versifications (KJV, NRSVA)
    align by reference.
    """
    slots = read_ztext(directory)
    markers = [(i, m.group(1)) for i, text in enumerate(slots) for m in [_CHAPTER.search(text)] if m]
    if not markers:
        raise ValueError(f"{directory}: expected OSIS chapter markers (<chapter osisID=...>), found none")
    verses = {}
    ends = [i for i, _ in markers[1:]] + [len(slots)]
    for (start, chapter), end in zip(markers, ends):
        for slot in range(start + 1, end):
            text = osis_text(slots[slot])
            if text:
                verses[f"{chapter}.{slot - start}"] = text
    return verses


def bible_pairs(source_dir: str, target_dir: str, max_ratio: Optional[float] = None) -> list[tuple[str, str]]:
    """(source, target) verses of two zText modules aligned by reference, in the source's order.

    `max_ratio`: drop pairs whose word counts differ by more than this factor
    (verses split or merged differently, appended glossaries).
    """
    source, target = keyed_verses(source_dir), keyed_verses(target_dir)
    pairs = []
    for key, a in source.items():
        b = target.get(key)
        if b is None:
            continue
        if max_ratio is not None and not 1 / max_ratio <= len(b.split()) / len(a.split()) <= max_ratio:
            continue
        pairs.append((a, b))
    return pairs


_QUOTES = str.maketrans({"\u201c": None, "\u201d": None, '"': None, "\u2018": "'", "\u2019": "'", "\u00b6": None})


def plain_verse(text: str) -> str:
    """A verse without paragraph marks and double quotes (the WEB quotes speech, the KJV does not)."""
    return " ".join(text.translate(_QUOTES).split()).replace(" ?", "?").replace(" !", "!")


def _module_dir(root: str, module: str) -> str:
    base = os.path.join(root, "usr/share/sword/modules/texts/ztext")
    return os.path.join(base, module) if os.path.isdir(os.path.join(base, module)) else os.path.join(base, module.lower())


def prepare_bible(out: str, debs: Optional[dict] = None, pair: str = "es-en") -> str:
    """Write out/{train,valid,test}.tsv of verse pairs (built once); returns `out`.

    `pair`: "es-en" (Reina-Valera 1909 -> King James) or "kjv-web" (King
    James -> World English Bible, archaic -> modern English; paragraph marks
    and quotation marks removed, verses whose lengths differ by more than 2x
    dropped). `debs`: already downloaded .deb files by language key.
    """
    if pair not in BIBLE_PAIRS:
        raise ValueError(f"pair: expected one of {sorted(BIBLE_PAIRS)}, got {pair!r}")
    if all(os.path.isfile(os.path.join(out, f"{s}.tsv")) for s in SPLITS):
        return out
    with tempfile.TemporaryDirectory() as work:
        dirs = []
        for lang in BIBLE_PAIRS[pair]:
            package, module = BIBLE[lang]
            dirs.append(_module_dir(unpack_deb(package, work, (debs or {}).get(lang)), module))
        if pair == "es-en":
            pairs = bible_pairs(*dirs)
        else:
            pairs = [(plain_verse(a), plain_verse(b)) for a, b in bible_pairs(*dirs, max_ratio=2.0)]
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


VENDORED = ("kjv-web-short", "bible-es-en-short")


def vendored_corpus(name: str = "kjv-web-short") -> str:
    """Directory of a vendored split (public domain; ``scripts/vendor_corpora.py`` rebuilds them):
    "kjv-web-short" (King James -> World English Bible) or "bible-es-en-short" (Spanish -> English)."""
    if name not in VENDORED:
        raise ValueError(f"name: expected one of {VENDORED}, got {name!r}")
    return os.path.join(os.path.dirname(__file__), "corpora", name)


def default_corpus() -> str:
    """The embedded default of ``pyprune demo``: short KJV -> WEB verses (archaic -> modern English)."""
    return vendored_corpus("kjv-web-short")


def write_short_splits(directory: str, out: str, max_words: int = 16) -> dict[str, int]:
    """Gzipped copies of a corpus's splits keeping pairs whose sides both have at most `max_words` words
    (byte-reproducible: no timestamp in the gzip header); returns the pair count per split."""
    counts = {}
    for split in SPLITS:
        pairs = [(a, b) for a, b in read_split(directory, split)
                 if len(a.split()) <= max_words and len(b.split()) <= max_words]
        write_tsv(os.path.join(out, f"{split}.tsv.gz"), pairs)
        counts[split] = len(pairs)
    return counts


def read_split(directory: str, split: str) -> list[tuple[str, str]]:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    for name in (f"{split}.tsv", f"{split}.tsv.gz", f"{split}.jsonl", f"{split}.jsonl.gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return read_parallel(path)
    raise FileNotFoundError(f"{directory}: no {split}.tsv / {split}.jsonl (optionally .gz)")
