#!/usr/bin/env python
"""The README's zoo table and picture, from the committed release folders (``zoo/*/eval_results.json``):
rewrites the table between the ``<!-- zoo-table -->`` markers of README.md and draws
``docs/zoo-accuracy-size.png`` (top-1 against checkpoint size). ``--check`` only reports whether the
README table is current (a test runs it)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from uniq_hub.hub.zoo_release import release_records, zoo_table
from uniq_hub.plot import plot_zoo

REPO = Path(__file__).resolve().parent.parent

README = REPO / "README.md"
PICTURE = REPO / "docs" / "zoo-accuracy-size.png"
MARKERS = re.compile(r"(<!-- zoo-table -->\n).*?(<!-- /zoo-table -->)", re.S)


def readme_with_table(text: str, table: str) -> str:
    if not MARKERS.search(text):
        raise ValueError(f"{README} has no <!-- zoo-table --> ... <!-- /zoo-table --> markers")
    return MARKERS.sub(lambda m: m.group(1) + table + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README table is not current")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = readme_with_table(text, zoo_table())
    if args.check:
        if new != text:
            print(f"{README}: the zoo table is stale; run scripts/zoo_summary.py")
            return 1
        return 0
    README.write_text(new)
    plot_zoo(release_records(), PICTURE)
    print(f"wrote the zoo table into {README} and {PICTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
