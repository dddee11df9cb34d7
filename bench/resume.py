"""Resuming: the wall time of a rerun of an unchanged command against the first run's.

Runs the participant level twice with the same work directory, as separate processes (as a user
reruns a command), on the demo dataset by default, and prints both wall times and their ratio.
Target (issue 7): the rerun takes under 10% of the first run. The rerun still starts Python,
imports torch, checks the inputs and the networks, lets Nipype find every step's cached result,
rewrites the outputs and the report; it recomputes nothing (tests/test_execution.py checks that
no step but the output writer runs again).

Usage::

    python bench/resume.py /tmp/resume                # simulate the demo dataset there, ~10 minutes
    python bench/resume.py /tmp/resume --preset tiny  # seconds (the ratio is then dominated by start-up)
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 0.10


def timed(command):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the dataset, outputs and work dir go (emptied first)")
    parser.add_argument("--preset", default="demo", choices=("tiny", "demo"))
    args = parser.parse_args(argv)
    bids, out, work = args.folder / "bids", args.folder / "out", args.folder / "work"
    if args.folder.exists():
        subprocess.run(["rm", "-rf", str(args.folder)], check=True)
    from bidsrecon.simulate import simulate_dataset

    simulate_dataset(bids, n_subjects=1, preset=args.preset, seed=0)
    command = [sys.executable, "-m", "bidsrecon", str(bids), str(out), "participant", "-w", str(work)]
    first = timed(command)
    print(f"first run   {first:8.1f} s", flush=True)
    second = timed(command)
    ratio = second / first
    print(f"rerun       {second:8.1f} s")
    print(f"SUMMARY {args.preset} dataset: first run {first:.0f} s, rerun of the unchanged command {second:.1f} s = "
          f"{100 * ratio:.1f}% of the first [{'OK' if ratio < TARGET_RATIO else 'OVER'} (target < 10%)]")


if __name__ == "__main__":
    main()
