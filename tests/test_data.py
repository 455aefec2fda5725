"""Parallel text: TSV/JSONL reader, fixed splits, SWORD zText verses by reference, Ding lines, vendored corpora."""
from __future__ import annotations

import gzip
import json
import os
import struct
import zlib

import pytest

from pyprune.data import parallel
from pyprune.io import atomic_write_text


def write_ztext(directory: str, testaments: dict) -> None:
    """A zText module: per testament a list of verse slots (OSIS markup, '' for an empty slot).

    Slots go two to a compressed block, so both the block index (.bzs) and the
    offsets within a block (.bzv) are exercised.
    """
    os.makedirs(directory, exist_ok=True)
    for name, slots in testaments.items():
        blocks, index, data = b"", b"", b""
        for first in range(0, len(slots), 2):
            raw = b""
            for slot in slots[first:first + 2]:
                text = slot.encode("utf-8")
                index += struct.pack("<IIH", len(blocks) // 12, len(raw), len(text))
                raw += text
            packed = zlib.compress(raw)
            blocks += struct.pack("<III", len(data), len(packed), len(raw))
            data += packed
        for suffix, content in ((".bzs", blocks), (".bzv", index), (".bzz", data)):
            with open(os.path.join(directory, name + suffix), "wb") as f:
                f.write(content)


def chapter(ref: str) -> str:
    return f'<chapter n="{ref.split(".")[-1]}" osisID="{ref}" sID="{ref}"/>'


def test_read_parallel_tsv_jsonl_gz_and_errors(tmp_path):
    tsv = tmp_path / "a.tsv"
    tsv.write_text("uno dos\tone two\n\n tres \t three \n", encoding="utf-8")
    assert parallel.read_parallel(str(tsv)) == [("uno dos", "one two"), ("tres", "three")]
    jsonl = tmp_path / "b.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"source": "hola", "target": "hello"}) + "\n")
    assert parallel.read_parallel(str(jsonl)) == [("hola", "hello")]

    (tmp_path / "bad.tsv").write_text("only one field\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected 'source<TAB>target', got 1 fields"):
        parallel.read_parallel(str(tmp_path / "bad.tsv"))
    (tmp_path / "bad.jsonl").write_text('{"source": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected a JSON object with 'source' and 'target'"):
        parallel.read_parallel(str(tmp_path / "bad.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"path: expected a .tsv or .jsonl file"):
        parallel.read_parallel(str(tmp_path / "x.csv"))
    with pytest.raises(FileNotFoundError, match="path: expected a parallel text file"):
        parallel.read_parallel(str(tmp_path / "missing.tsv"))
    with pytest.raises(ValueError, match="split: expected one of"):
        parallel.read_split(str(tmp_path), "dev")


def test_split_of_is_fixed_five_percent_each():
    splits = [parallel.split_of(i) for i in range(4000)]
    assert splits.count("valid") == splits.count("test") == 200
    assert splits[180:190] == ["valid"] * 10 and splits[190:200] == ["test"] * 10 and splits[200] == "train"


def test_verses_align_by_reference_across_versifications(tmp_path):
    # Module A (KJV-like): Gen.1 has 2 verses, Gen.2 has 1. Module B (another versification): an extra book
    # introduction slot, Gen.1 has 3 verses (the third exists only there), Gen.2.1 is empty.
    a = {"ot": ["", "<milestone/>", '<div osisID="Gen" type="book"/><title>Genesis</title>', chapter("Gen.1"),
                "In <w>the</w> beginning ¶", "And the earth", chapter("Gen.2"), "Thus the heavens"],
         "nt": ["", chapter("Matt.1"), "The book of the generation; <note>a note</note>"]}
    b = {"ot": ["", "<milestone/>", "<div type='front'/>Preface", '<div osisID="Gen" type="book"/>',
                chapter("Gen.1"), "“In the beginning”", "The earth", "Only here", chapter("Gen.2"), ""],
         "nt": ["", chapter("Matt.1"), "The book of the genealogy of Jesus Christ, the son of David, the son of Abraham !"]}
    write_ztext(str(tmp_path / "a"), a)
    write_ztext(str(tmp_path / "b"), b)
    verses = parallel.keyed_verses(str(tmp_path / "b"))
    assert verses["Gen.1.3"] == "Only here" and "Gen.2.1" not in verses
    assert parallel.keyed_verses(str(tmp_path / "a"))["Matt.1.1"] == "The book of the generation;"
    pairs = parallel.bible_pairs(str(tmp_path / "a"), str(tmp_path / "b"))
    assert pairs == [("In the beginning ¶", "“In the beginning”"), ("And the earth", "The earth"),
                     ("The book of the generation;",
                      "The book of the genealogy of Jesus Christ, the son of David, the son of Abraham !")]
    # max_ratio drops the verse whose lengths differ more than 2x (4 words vs 16).
    assert len(parallel.bible_pairs(str(tmp_path / "a"), str(tmp_path / "b"), max_ratio=2.0)) == 2
    assert parallel.plain_verse("“In the beginning” ¶ he said ! Why ?") == "In the beginning he said! Why?"
    write_ztext(str(tmp_path / "c"), {"ot": ["", "no chapters here"], "nt": [""]})
    with pytest.raises(ValueError, match="expected OSIS chapter markers"):
        parallel.keyed_verses(str(tmp_path / "c"))


def test_prepare_bible_rejects_an_unknown_pair(tmp_path):
    with pytest.raises(ValueError, match=r"pair: expected one of \['es-en', 'kjv-web'\]"):
        parallel.prepare_bible(str(tmp_path), pair="en-es")


def test_ding_pairs_keep_aligned_sentences():
    lines = ["# comment :: line",
             "Das ist gut. {adj} | Er kommt morgen an. :: That is good. | He will arrive tomorrow.",
             "Ich gehe nach Hause. :: I am going home.",
             "Ich gehe nach Hause. :: I am going home.",
             "zwei | Teile :: one part only",
             "Hund; Katze und Maus. :: dog; cat and mouse."]
    assert parallel.ding_pairs(lines) == [("Er kommt morgen an.", "He will arrive tomorrow."),
                                          ("Ich gehe nach Hause.", "I am going home.")]


def test_vendored_corpora_and_short_splits(tmp_path):
    assert parallel.default_corpus() == parallel.vendored_corpus("kjv-web-short")
    sizes = {"kjv-web-short": (6134, 316, 332), "bible-es-en-short": (5859, 303, 299)}
    for name, expected in sizes.items():
        splits = [parallel.read_split(parallel.vendored_corpus(name), s) for s in parallel.SPLITS]
        assert tuple(map(len, splits)) == expected
        assert all(len(a.split()) <= 16 and len(b.split()) <= 16 for split in splits for a, b in split)
    kjv, web = parallel.read_split(parallel.default_corpus(), "test")[0]
    assert (kjv, web) == ("And God spake unto Noah, saying,", "God spoke to Noah, saying,")
    with pytest.raises(ValueError, match="name: expected one of"):
        parallel.vendored_corpus("wmt14")

    full = tmp_path / "full"
    for split in parallel.SPLITS:
        parallel.write_tsv(str(full / f"{split}.tsv"), [("a b", "c"), ("a " * 17, "c"), (split, "d " * 3)])
    counts = parallel.write_short_splits(str(full), str(tmp_path / "short"), max_words=16)
    assert counts == {"train": 2, "valid": 2, "test": 2}
    first = (tmp_path / "short" / "test.tsv.gz").read_bytes()
    parallel.write_short_splits(str(full), str(tmp_path / "short"), max_words=16)
    assert (tmp_path / "short" / "test.tsv.gz").read_bytes() == first          # no timestamp inside
    assert parallel.read_split(str(tmp_path / "short"), "test") == [("a b", "c"), ("test", "d d d")]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(str(tmp_path / "x.txt"), "hi")
    finally:
        os.umask(old)
    assert (tmp_path / "x.txt").stat().st_mode & 0o777 == 0o640
