"""Rebuild the vendored corpora in pyprune/data/corpora from Debian's public-domain SWORD Bibles.

    python scripts/vendor_corpora.py [WORK_DIR]

Downloads sword-text-kjv, sword-text-sparv and sword-text-web (apt-get
download, no root), builds the full verse-pair splits in WORK_DIR (default: a
temporary directory) and writes the short splits (both sides at most 16
words) as byte-reproducible .tsv.gz files.
"""
import os
import sys
import tempfile

from pyprune.data import parallel

MAX_WORDS = 16


def main(work: str) -> None:
    for pair, name in (("kjv-web", "kjv-web-short"), ("es-en", "bible-es-en-short")):
        full = parallel.prepare_bible(os.path.join(work, pair), pair=pair)
        counts = parallel.write_short_splits(full, parallel.vendored_corpus(name), MAX_WORDS)
        print(name, counts)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as work:
            main(work)
