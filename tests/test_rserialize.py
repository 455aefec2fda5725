"""The R lazy-load reader, on a database written by hand in R's XDR format."""
import gzip
import struct
import zlib

import pytest

from pyprune.data.rserialize import read_lazyload


def xdr_header():
    return b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + b"UTF-8"


def char(text):
    if text is None:
        return struct.pack(">ii", 0x00040009, -1)
    data = text.encode()
    return struct.pack(">ii", 0x00040009, len(data)) + data


def strings(values):
    return struct.pack(">ii", 16, len(values)) + b"".join(char(v) for v in values)


def symbol(name):
    return struct.pack(">i", 1) + char(name)


def named_list(items):
    body = struct.pack(">ii", 19 | (1 << 9), len(items)) + b"".join(v for _, v in items)
    names = strings([k for k, _ in items])
    attributes = struct.pack(">i", 2 | (1 << 10)) + symbol("names") + names + struct.pack(">i", 254)
    return body + attributes


def integers(values):
    return struct.pack(">ii", 13, len(values)) + struct.pack(f">{len(values)}i", *values)


def chunk(payload):
    data = xdr_header() + payload
    return struct.pack(">I", len(data)) + zlib.compress(data)


def test_reads_character_vectors(tmp_path):
    books = {"emma": ["EMMA", "", "By Jane Austen", None], "persuasion": ["Persuasion", "Chapter 1"]}
    rdb, offsets = b"", []
    for name, lines in books.items():
        blob = chunk(strings(lines))
        offsets.append((name, len(rdb), len(blob)))
        rdb += blob
    variables = named_list([(n, integers([o, s])) for n, o, s in offsets])
    index = named_list([("variables", variables), ("references", named_list([])), ("compressed", integers([1]))])
    (tmp_path / "db.rdb").write_bytes(rdb)
    (tmp_path / "db.rdx").write_bytes(gzip.compress(xdr_header() + index))
    assert read_lazyload(str(tmp_path / "db")) == books


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prefix"):
        read_lazyload(str(tmp_path / "missing"))
    (tmp_path / "bad.rdx").write_bytes(gzip.compress(b"A\n"))
    (tmp_path / "bad.rdb").write_bytes(b"")
    with pytest.raises(ValueError, match="XDR"):
        read_lazyload(str(tmp_path / "bad"))
