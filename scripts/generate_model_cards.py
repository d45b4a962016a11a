#!/usr/bin/env python
"""Write ``model_cards/<name>.md`` for every zoo entry (plus an index), from the zoo registry and
the results JSON files; ``--check`` only reports cards that are missing or out of date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uniq_hub.catalog.cards import generate_cards
from uniq_hub.catalog.zoo import list_entries
from uniq_hub.hub.zoo_release import release_folders

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "model_cards", help="output directory")
    parser.add_argument("--results", action="append", metavar="DIR",
                        help="results JSON directory (repeatable; default benchmarks/results)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any card is stale")
    args = parser.parse_args(argv)

    files = generate_cards(list_entries(args.results), release_folders(REPO / "zoo"))
    stale = [n for n, text in files.items() if not (args.out / n).is_file() or (args.out / n).read_text() != text]
    extra = sorted(p.name for p in args.out.glob("*.md") if p.name not in files) if args.out.is_dir() else []
    if args.check:
        for name in stale:
            print(f"stale or missing: {args.out / name}")
        for name in extra:
            print(f"not generated from the zoo: {args.out / name}")
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (args.out / name).write_text(files[name])
    for name in extra:
        (args.out / name).unlink()
    print(f"{len(files)} cards in {args.out} ({len(stale)} written, {len(extra)} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
