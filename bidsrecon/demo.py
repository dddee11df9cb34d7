"""``make demo``: simulate the demo dataset, run the participant and group levels, say where results are.

Usage: ``python -m bidsrecon.demo [DEMO_DIR]`` (default ``demo``). A second run reuses the dataset
and the work directory, so it only redoes what changed; a work directory of another bidsrecon
version, which the app refuses, is started afresh (``--clean-workdir``).
"""
import sys
import time
from pathlib import Path

from bidsrecon.cli import main as bidsrecon_main
from bidsrecon.errors import BidsReconError
from bidsrecon.simulate import simulate_dataset
from bidsrecon.workflow_control import check_work_version


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    demo_dir = Path(argv[0] if argv else "demo").resolve()
    bids_dir, output_dir, work_dir = demo_dir / "bids", demo_dir / "bidsrecon", demo_dir / "work"
    started = time.perf_counter()
    if not (bids_dir / "dataset_description.json").is_file():
        print(f"simulating the demo dataset in {bids_dir} ...", flush=True)
        simulate_dataset(bids_dir, n_subjects=1, preset="demo", seed=0)
    options = {"participant": [], "group": []}
    try:
        check_work_version(work_dir, ["01"])
    except BidsReconError:
        print(f"{work_dir} holds another bidsrecon version's results: starting it afresh", flush=True)
        options["participant"] = ["--clean-workdir"]
    for level in ("participant", "group"):
        print(f"running the {level} level ...", flush=True)
        code = bidsrecon_main([str(bids_dir), str(output_dir), level, "-w", str(work_dir), *options[level]])
        if code:
            return code
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\ndemo finished in {minutes:.1f} min\n"
        f"  reconstructions: {output_dir}/sub-01/recon/\n"
        f"  metrics:         {output_dir}/sub-01/sub-01_desc-sets_metrics.tsv\n"
        f"  report:          {output_dir}/sub-01.html\n"
        f"  group table:     {output_dir}/group/group_desc-sets_metrics.tsv\n"
        f"  group report:    {output_dir}/group/group.html\n"
        f"  figure:          {output_dir}/figures/sub-01_desc-reconstructions_figure.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
