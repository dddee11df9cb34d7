"""How well Realign recovers the simulator's head motion: correlation per run and a figure.

A simulated dataset is written with its fMRIPrep-style derivatives, whose confounds hold the true
motion of every raw run; every raw run then goes through the Realign interface (motion
correction as the raw-input path runs it) and the estimated translations are compared with the
true ones. The issue's target is r >= 0.9.

Usage::

    python bench/motion_accuracy.py --preset demo --figure motion_accuracy.png
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

TRANSLATIONS = ("trans_x", "trans_y", "trans_z")


def compare_runs(root, work_dir):
    """Per raw run: (name, estimated table, true table)."""
    from bidsrecon.interfaces.motion import Realign

    comparisons = []
    for bold_file in sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz")):
        stem = bold_file.name[: -len("_bold.nii.gz")]
        func = root / "derivatives/fmriprep" / bold_file.parent.relative_to(root)
        truth_file = func / f"{stem}_desc-confounds_timeseries.tsv"
        run_dir = work_dir / stem
        run_dir.mkdir()
        result = Realign(bold_file=str(bold_file), tr=2.0).run(cwd=str(run_dir))
        comparisons.append((stem, pd.read_csv(result.outputs.motion_file, sep="\t"),
                            pd.read_csv(truth_file, sep="\t")))
    return comparisons


def correlations(comparisons):
    """DataFrame: one row per run, r of each translation axis."""
    rows = [{"run": stem, **{axis: np.corrcoef(estimated[axis], true[axis])[0, 1] for axis in TRANSLATIONS}}
            for stem, estimated, true in comparisons]
    return pd.DataFrame(rows)


def draw(comparisons, table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem, estimated, true = comparisons[0]
    figure, (course, scatter) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(2, 1))
    for axis, colour in zip(TRANSLATIONS, ("tab:red", "tab:green", "tab:blue")):
        # Estimates are relative to the middle volume, the truth to the first: align their means.
        offset = estimated[axis].mean() - true[axis].mean()
        course.plot(true[axis], color=colour, lw=2, alpha=0.4, label=f"{axis} true")
        course.plot(estimated[axis] - offset, color=colour, lw=1, label=f"{axis} estimated")
        for _, run_estimate, run_true in comparisons:
            scatter.plot(run_true[axis] - run_true[axis].mean(), run_estimate[axis] - run_estimate[axis].mean(),
                         ".", color=colour, ms=2, alpha=0.5)
    course.set(xlabel="volume", ylabel="mm", title=stem)
    course.legend(fontsize=7, ncol=3)
    limit = np.abs(scatter.get_xlim() + scatter.get_ylim()).max()
    scatter.plot([-limit, limit], [-limit, limit], "k--", lw=0.8)
    medians = "/".join(f"{table[axis].median():.3f}" for axis in TRANSLATIONS)
    scatter.set(xlabel="true (mm, demeaned)", ylabel="estimated (mm, demeaned)",
                title=f"{len(table)} runs: median r {medians}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    from bidsrecon.simulate import simulate_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="simulation preset (tiny, demo)")
    parser.add_argument("--figure", type=Path, help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="motion_accuracy_") as folder:
        root = simulate_dataset(Path(folder) / "bids", preset=args.preset, fmriprep=True)
        work_dir = Path(folder) / "work"
        work_dir.mkdir()
        comparisons = compare_runs(root, work_dir)
    table = correlations(comparisons)
    print(table.to_string(index=False, float_format="%.3f"))
    if args.figure:
        draw(comparisons, table, args.figure)
    lowest = table[list(TRANSLATIONS)].min()
    print(f"SUMMARY preset {args.preset}, {len(table)} runs: translation r median "
          + "/".join(f"{table[axis].median():.3f}" for axis in TRANSLATIONS)
          + ", lowest " + "/".join(f"{lowest[axis]:.3f}" for axis in TRANSLATIONS)
          + f" (target >= 0.9: {'met' if lowest.min() >= 0.9 else 'NOT met in every run'})")


if __name__ == "__main__":
    main()
