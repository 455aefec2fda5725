"""Read character vectors out of an R lazy-load database (.rdx index + .rdb data).

R packages (Debian's r-cran-* included) store their datasets that way. The
format: ``.rdx`` is a gzip-compressed serialised list with an entry
``variables`` (name -> (offset, length) in the .rdb); each .rdb chunk is a
4-byte big-endian length followed by a zlib-compressed serialised object. The
serialisation is R's XDR format (big-endian). Only what text datasets use is
decoded: vectors (character, integer, logical, double, list), pairlists,
symbols and attributes; anything else raises ValueError.

Written here rather than depending on PyPI ``rdata``, which pulls pandas and
xarray to read what is, for text, a few dozen lines of format.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

NIL, SYMBOL, PAIRLIST, CHAR, LOGICAL, INTEGER, DOUBLE, STRING, LIST = 254, 1, 2, 9, 10, 13, 14, 16, 19
REFERENCE = 255
HAS_ATTRIBUTES, HAS_TAG = 1 << 9, 1 << 10


class _Reader:
    def __init__(self, data: bytes) -> None:
        if data[:2] != b"X\n":
            raise ValueError("R data: expected XDR serialisation (header 'X\\n'), got " + repr(data[:2]))
        self.data, self.pos = data, 2
        version = self.int()
        self.int(), self.int()                       # writer's and minimal reader's R versions
        if version == 3:
            skip = self.int()                        # native encoding name
            self.pos += skip
        self.references: list = []

    def int(self) -> int:
        value = struct.unpack_from(">i", self.data, self.pos)[0]
        self.pos += 4
        return value

    def length(self) -> int:
        n = self.int()
        if n == -1:                                   # long vector: two 32-bit halves
            upper, lower = self.int(), self.int()
            n = (upper << 32) + (lower & 0xFFFFFFFF)
        return n

    def item(self):
        flags = self.int()
        kind = flags & 0xFF
        if kind == NIL:
            return None
        if kind == REFERENCE:
            index = flags >> 8 or self.int()
            return self.references[index - 1]
        if kind == SYMBOL:
            name = self.item()
            self.references.append(name)
            return name
        if kind == PAIRLIST:
            result = {}
            while kind == PAIRLIST:
                if flags & HAS_ATTRIBUTES:
                    self.item()
                tag = self.item() if flags & HAS_TAG else str(len(result))
                result[tag] = self.item()
                flags = self.int()
                kind = flags & 0xFF
            if kind != NIL:
                raise ValueError(f"R data: pairlist ending in type {kind}")
            return result
        if kind == CHAR:
            n = self.int()
            if n == -1:
                return None                           # NA_character_
            text = self.data[self.pos:self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return text
        if kind in (LOGICAL, INTEGER):
            n = self.length()
            values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == DOUBLE:
            n = self.length()
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (STRING, LIST):
            values = [self.item() for _ in range(self.length())]
        else:
            raise ValueError(f"R data: unsupported object type {kind}")
        if flags & HAS_ATTRIBUTES:
            attributes = self.item()
            names = attributes.get("names") if isinstance(attributes, dict) else None
            if kind == LIST and names:
                return dict(zip(names, values))
        return values


def _unserialize(blob: bytes):
    length = struct.unpack_from(">I", blob, 0)[0]
    data = zlib.decompress(blob[4:])
    if len(data) != length:
        raise ValueError(f"R data: chunk decompressed to {len(data)} bytes, header says {length}")
    return _Reader(data).item()


def read_lazyload(prefix: str) -> dict:
    """{name: object} of every variable in ``prefix.rdx`` / ``prefix.rdb``."""
    for suffix in (".rdx", ".rdb"):
        if not os.path.isfile(prefix + suffix):
            raise FileNotFoundError(f"prefix: expected {prefix + suffix} to exist")
    with open(prefix + ".rdx", "rb") as file:
        index = _Reader(gzip.decompress(file.read())).item()    # the index is a gzip'ed RDS file
    with open(prefix + ".rdb", "rb") as file:
        data = file.read()
    result = {}
    for name, (offset, size) in index["variables"].items():
        result[name] = _unserialize(data[int(offset):int(offset) + int(size)])
    return result
