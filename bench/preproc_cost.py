"""Cost of preprocessing one full-size run: wall time and peak memory.

One ds001506-sized run (96×96×76 voxels of 2 mm, 239 volumes, TR 2 s: a 32-s rest, 50 + 5
blocks of 8 s, a 6-s rest) is synthesised in a temporary folder with the simulator's brain,
haemodynamics, head motion (up to 1 mm) and noise, and written as int16 .nii.gz as scanners
write it. Each path then runs in a fresh Python process, through the Nipype interfaces the
workflow uses, so that its peak resident memory (``ru_maxrss``, imports included) is its own:

- ``block``: brain mask (EpiMask) + clean and block samples (RunSamples, six motion confounds);
- ``lss``: the same with LSS betas instead of block averages;
- ``realign``: motion correction with slice-timing correction (Realign), reported separately.

The targets (issue 3): under 60 s and 4 GB per run for the sample paths.

Usage::

    python bench/preproc_cost.py            # full size (about 2 minutes, under 2 GB of memory)
    python bench/preproc_cost.py --quick    # a 32×32×24 grid, seconds
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

TR = 2.0
N_VOLUMES = 239
INITIAL_REST, BLOCK, N_BLOCKS = 32.0, 8.0, 55
VOXEL_MM = 2.0
FULL_GRID = (96, 96, 76)
QUICK_GRID = (32, 32, 24)
MOTION_MM = 1.0
NOISE_PERCENT = 2.0
TARGET_SECONDS, TARGET_GB = 60.0, 4.0
STAGES = ("block", "lss", "realign")


def synthesise_run(folder, shape, seed=0):
    """Write bold.nii.gz, trials.tsv, confounds.tsv (true motion) and slice_timing.json."""
    from bidsrecon.simulate import bold
    from bidsrecon.simulate.brain import make_anatomy

    rng = np.random.default_rng(seed)
    anatomy = make_anatomy(shape, VOXEL_MM, 0.7, rng)
    baseline = bold.baseline_intensity(anatomy.brain_mask, rng)
    onsets = INITIAL_REST + BLOCK * np.arange(N_BLOCKS)
    durations = np.full(N_BLOCKS, BLOCK)
    slice_times = bold.slice_offsets(shape[2], TR)
    regressors = bold.event_regressors(onsets, durations, N_VOLUMES, TR, slice_times)
    visual = anatomy.visual_mask
    voxel_slices = np.nonzero(visual)[2]
    amplitudes = rng.normal(0.0, 1.0, size=(N_BLOCKS, int(visual.sum())))  # percent signal
    motion = bold.motion_parameters(N_VOLUMES, MOTION_MM, rng)
    noise_sd = np.where(anatomy.brain_mask, baseline, bold.MEAN_BRAIN_INTENSITY) * NOISE_PERCENT / 100.0
    volumes = np.empty(shape + (N_VOLUMES,), dtype=np.int16)
    # One volume at a time: the whole run in float64 would take 1.3 GB.
    for index in range(N_VOLUMES):
        percent = np.zeros(shape)
        percent[visual] = np.einsum("ve,ev->v", regressors[voxel_slices, index], amplitudes)
        moved = bold.move_volumes((baseline * (1.0 + percent / 100.0))[..., None], motion[index:index + 1],
                                  VOXEL_MM)[..., 0]
        noisy = np.abs(moved + rng.standard_normal(shape) * noise_sd)
        volumes[..., index] = np.clip(np.round(noisy), 0, np.iinfo(np.int16).max)
    affine = np.diag([VOXEL_MM] * 3 + [1.0])
    image = nib.Nifti1Image(volumes, affine)
    image.header.set_zooms((VOXEL_MM,) * 3 + (TR,))
    nib.save(image, folder / "bold.nii.gz")
    pd.DataFrame({"onset": onsets, "duration": durations,
                  "stimulus": [f"image{index:02d}" for index in range(N_BLOCKS)]}).to_csv(
        folder / "trials.tsv", sep="\t", index=False)
    columns = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    pd.DataFrame(motion, columns=columns).to_csv(folder / "confounds.tsv", sep="\t", index=False)
    (folder / "slice_timing.json").write_text(json.dumps(slice_times.tolist()))


def _samples_stage(run_dir, method):
    from bidsrecon.interfaces.samples import EpiMask, RunSamples
    from bidsrecon.paper import CLIP_SD, DELAY_SECONDS, DISCARD_SECONDS

    start = time.perf_counter()
    mask = EpiMask(bold_file=str(run_dir / "bold.nii.gz")).run().outputs.out_mask
    result = RunSamples(bold_file=str(run_dir / "bold.nii.gz"), mask_file=mask,
                        trials_file=str(run_dir / "trials.tsv"), tr=TR,
                        confounds_file=str(run_dir / "confounds.tsv"), method=method, normalise="zscore",
                        discard_seconds=DISCARD_SECONDS, delay_seconds=DELAY_SECONDS, clip_sd=CLIP_SD).run()
    seconds = time.perf_counter() - start
    samples = np.load(result.outputs.out_samples)
    return seconds, {"samples_shape": list(samples.shape), "finite": bool(np.isfinite(samples).all())}


def _realign_stage(run_dir):
    from bidsrecon.interfaces.motion import Realign

    slice_times = json.loads((run_dir / "slice_timing.json").read_text())
    start = time.perf_counter()
    result = Realign(bold_file=str(run_dir / "bold.nii.gz"), tr=TR, slice_timing=slice_times,
                     slice_timing_enabled=True).run()
    seconds = time.perf_counter() - start
    estimated = pd.read_csv(result.outputs.motion_file, sep="\t")
    true = pd.read_csv(run_dir / "confounds.tsv", sep="\t")
    r = {axis: round(float(np.corrcoef(estimated[axis], true[axis])[0, 1]), 3)
         for axis in ("trans_x", "trans_y", "trans_z")}
    return seconds, {"translation_r": r}


def run_stage(stage, run_dir):
    """Run one path in this process; returns its wall time, peak memory and checks."""
    import bidsrecon.interfaces.motion  # noqa: F401  (imports are not part of a run's cost)
    import bidsrecon.interfaces.samples  # noqa: F401

    baseline_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    os.chdir(tempfile.mkdtemp(prefix=f"{stage}_", dir=run_dir))
    seconds, checks = _realign_stage(run_dir) if stage == "realign" else _samples_stage(run_dir, stage)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    return {"stage": stage, "seconds": round(seconds, 1), "peak_gb": round(peak_gb, 2),
            "after_imports_gb": round(baseline_gb, 2), **checks}


def _in_child(stage, run_dir):
    completed = subprocess.run([sys.executable, __file__, "--stage", stage, "--run-dir", str(run_dir)],
                               capture_output=True, text=True, check=False)
    if completed.returncode:
        raise RuntimeError(f"stage {stage} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_GRID} grid instead of {FULL_GRID}")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.run_dir)))
        return
    shape = QUICK_GRID if args.quick else FULL_GRID
    with tempfile.TemporaryDirectory(prefix="preproc_cost_") as folder:
        run_dir = Path(folder)
        start = time.perf_counter()
        synthesise_run(run_dir, shape)
        print(f"synthesised {shape[0]}x{shape[1]}x{shape[2]} x {N_VOLUMES} volumes in "
              f"{time.perf_counter() - start:.0f} s ({(run_dir / 'bold.nii.gz').stat().st_size / 2**20:.0f} MB gz)",
              flush=True)
        results = {}
        for stage in STAGES:
            results[stage] = _in_child(stage, run_dir)
            print(json.dumps(results[stage]), flush=True)
    block, lss, realign = (results[stage] for stage in STAGES)
    met = all(results[stage]["seconds"] < TARGET_SECONDS and results[stage]["peak_gb"] < TARGET_GB
              for stage in ("block", "lss"))
    r = realign["translation_r"]
    print(f"SUMMARY {shape[0]}x{shape[1]}x{shape[2]}x{N_VOLUMES}: block path {block['seconds']} s / "
          f"{block['peak_gb']} GB, lss path {lss['seconds']} s / {lss['peak_gb']} GB "
          f"(target < {TARGET_SECONDS:g} s, < {TARGET_GB:g} GB: {'met' if met else 'NOT met'}); "
          f"motion + slice-timing correction {realign['seconds']} s / {realign['peak_gb']} GB, "
          f"translation r {r['trans_x']}/{r['trans_y']}/{r['trans_z']}")


if __name__ == "__main__":
    main()
