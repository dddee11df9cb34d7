#!/usr/bin/env python3
"""Are two bidsrecon output folders the same? Byte for byte, except the records of a run.

Used to show that a change of the code left the results alone: run the same command (the demo,
say) with the old and the new code into two folders, then::

    python tools/compare_outputs.py OLD_OUTPUT NEW_OUTPUT

Every file is compared byte for byte, after one normalisation: in text files the folder that
holds each output (the demo's folder, whose path the dataset description and sidecars record)
is replaced by a placeholder. Excepted, as records of when and how a run went rather than what
it computed: the provenance and resource logs (``log/``) and the HTML reports, which hold times
and the command line. Prints each differing or missing file; exit 0 when none, 1 otherwise.
"""
import sys
from pathlib import Path

RUN_RECORDS = ("*/log/*", "*.html")
TEXT_SUFFIXES = {".json", ".tsv", ".md", ".txt", ".svg", ""}


def _is_record(relative):
    return any(Path(relative).match(pattern) for pattern in RUN_RECORDS)


def _content(path, root):
    data = path.read_bytes()
    if path.suffix in TEXT_SUFFIXES or path.name.startswith("."):
        data = data.replace(str(root.resolve().parent).encode(), b"<FOLDER>")
    return data


def compare(first, second):
    """``(same, differing, only_first, only_second, excepted)``: lists of relative paths."""
    first, second = Path(first), Path(second)
    files = {side: {str(path.relative_to(side)) for path in side.rglob("*") if path.is_file()}
             for side in (first, second)}
    same, differing, excepted = [], [], []
    for relative in sorted(files[first] & files[second]):
        if _is_record(relative):
            excepted.append(relative)
        elif _content(first / relative, first) == _content(second / relative, second):
            same.append(relative)
        else:
            differing.append(relative)
    return (same, differing, sorted(files[first] - files[second]), sorted(files[second] - files[first]),
            excepted)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    same, differing, only_first, only_second, excepted = compare(*argv)
    for label, paths in (("differs", differing), (f"only in {argv[0]}", only_first),
                         (f"only in {argv[1]}", only_second)):
        for path in paths:
            print(f"{label}: {path}")
    print(f"{len(same)} files identical, {len(differing)} differ, {len(only_first) + len(only_second)} in one "
          f"folder only; {len(excepted)} run records not compared ({', '.join(RUN_RECORDS)})")
    return 0 if not (differing or only_first or only_second) else 1


if __name__ == "__main__":
    sys.exit(main())
