"""Do the reconstructions show what was seen? The app against a plain linear pixel decoder.

What it measures
----------------
On simulated subjects (ds001506's layout: 8-s blocks for natural images and shapes, 12-s letter
blocks with 12-s rests, imagery trials; ``bidsrecon.simulate``), per test set, for the app at the
settings given and for the baseline every reconstruction method must beat, a **plain linear ridge
from the same voxel samples to 32-px grey pixels** (Miyawaki et al. 2008's kind of decoder; its
alpha chosen by grouped 5-fold cross-validation on the training trials only, held-out trials of an
image averaged as test items are; voxels z-scored with the training statistics; test items
averaged over their trials, as the app does):

* ``pixel_id``: pairwise identification by pixel correlation (RGB at the app's image size; the
  baseline's grey image upsampled and copied into the three channels), chance 0.5;
* ``ssim``: SSIM on grey (``bidsrecon.evaluation.ssim``);
* ``shape_id``: pairwise identification of each shape against the shapes of its own colour only
  (``bidsrecon.evaluation.shape_identification``; letters are all black, natural images have
  none): what is left when colour cannot help;
* ``effnet_id``: two-way identification in EfficientNet-Lite0's features
  (``bidsrecon.evaluation.networks.efficientnet_identification``, the evaluation table's row).

Yardstick: each seed also scores the true images area-averaged to :data:`YARDSTICK_SIZES` pixels
(and resized back), as ``truth at N px``; a method's row can then be read as about as informative
as the true image at some resolution. They are not methods and do not enter the ``SUMMARY``.

Both methods are scored by the same functions on the same items. The samples are the app's own:
read from its work dir through Nipype's JSON record of the decode node's inputs (never the
pickles), as ``bench/decoder_agreement.py`` does.

Target (issue)
--------------
On every seed, the app at its defaults is at least the baseline on every set and measure; mean
over seeds: letters pixel_id >= 0.80, shapes shape_id >= 0.80, natural pixel_id >= 0.92,
imagery pixel_id >= 0.85. The last line, ``SUMMARY``, says whether both hold. Where the app is
behind, it also gives the 95 % paired bootstrap interval of the difference over the set's items
(:func:`difference_interval`) and counts the losses whose interval lies wholly below 0: a set of
10 letters or 20 natural images is small, and a loss within the items' spread can change side
with another draw of them.

Usage::

    python bench/validity.py                      # 3 seeds, demo preset, the app's defaults
    python bench/validity.py --seeds 0 --app-args --pixel-weight 0 --start flat   # an ablation
    python bench/validity.py --figure /tmp/validity.png   # also draw truths, baseline and app

Each seed's dataset and work dir are kept under ``--root`` (default ``$TMPDIR/bidsrecon-validity``)
and reused: a rerun with other reconstruction settings only reconstructs again.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_agreement import app_decoding_data, decode_node_inputs  # noqa: E402

from bidsrecon.evaluation import pairwise_identification, shape_identification, ssim  # noqa: E402
from bidsrecon.evaluation.metrics import luma  # noqa: E402
from bidsrecon.evaluation.networks import efficientnet_identification  # noqa: E402
from bidsrecon.images import load_images  # noqa: E402
from bidsrecon.simulate import simulate_dataset  # noqa: E402
from bidsrecon.workflow_control import stamp_work_version  # noqa: E402

BASELINE_SIZE = 32
BASELINE_ALPHAS = np.logspace(-1, 6, 15)
MEASURES = ("pixel_id", "ssim", "shape_id", "effnet_id")
#: Sides, in pixels, of the true images scored as the yardstick.
YARDSTICK_SIZES = (4, 8)
#: Mean over seeds each set must reach (set: (measure, at least)).
TARGETS = {"letters": ("pixel_id", 0.80), "shapes": ("shape_id", 0.80), "natural": ("pixel_id", 0.92),
           "imagery": ("pixel_id", 0.85)}


def resize(images, size):
    """(n, H, W[, C]) images area-averaged (down) or bilinearly resized (up) to size x size."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    tensor = tensor[:, None] if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    if size <= tensor.shape[-1]:
        out = torch.nn.functional.adaptive_avg_pool2d(tensor, size)
    else:
        out = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return out[:, 0].numpy() if images.ndim == 3 else out.permute(0, 2, 3, 1).numpy()


def linear_pixel_baseline(data, image_size, n_folds=5, seed=0):
    """Ridge from voxels to grey 32-px pixels; alpha by grouped CV on the training trials.

    Returns
    -------
    predicted : ndarray, shape (n_items, image_size, image_size, 3), grey in all channels
    alpha : float
    """
    train, image_index = data["train_samples"].astype(np.float64), data["image_index"]
    mean, sd = train.mean(axis=0), train.std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    X = (train - mean) / sd
    names = data["train_names"]
    targets = luma(load_images([data["stimuli"][name] for name in names], image_size))
    Y = resize(targets, BASELINE_SIZE).reshape(len(names), -1).astype(np.float64)
    folds = np.random.default_rng(seed).permutation(len(names)) % n_folds
    scores = np.zeros(len(BASELINE_ALPHAS))
    for fold in range(n_folds):
        held = folds[image_index] == fold
        fit_X, fit_Y = X[~held], Y[image_index[~held]]
        y_mean = fit_Y.mean(axis=0)
        # Dual form: n_trials x n_trials, one eigendecomposition serves every alpha.
        values, vectors = np.linalg.eigh(fit_X @ fit_X.T)
        projected = vectors.T @ (fit_Y - y_mean)
        held_images = np.unique(image_index[held])
        test = np.stack([X[held & (image_index == image)].mean(axis=0) for image in held_images])
        cross = test @ fit_X.T @ vectors
        for k, alpha in enumerate(BASELINE_ALPHAS):
            predicted = cross @ (projected / (values + alpha)[:, None]) + y_mean
            scores[k] += np.mean([np.corrcoef(p, t)[0, 1] for p, t in zip(predicted, Y[held_images])])
    alpha = float(BASELINE_ALPHAS[int(np.argmax(scores))])
    weights = np.linalg.solve(X @ X.T + alpha * np.eye(len(X)), Y[image_index] - Y[image_index].mean(axis=0))
    test = (data["item_samples"] - mean) / sd
    predicted = (test @ X.T @ weights + Y[image_index].mean(axis=0)).reshape(-1, BASELINE_SIZE, BASELINE_SIZE)
    upsampled = resize(np.clip(predicted, 0, 1).astype(np.float32), image_size)
    return np.repeat(upsampled[..., None], 3, axis=-1), alpha


def item_scores(images, truths, names):
    """The four measures of each item of one test set: measure -> ndarray (n_items,), NaN where none."""
    _, network = efficientnet_identification(images, truths)
    return {"pixel_id": pairwise_identification(images, truths),
            "ssim": np.asarray(ssim(images, truths), dtype=np.float64),
            "shape_id": shape_identification(images, truths, names),
            "effnet_id": network}


def set_means(scores):
    """Each measure's mean over the items it scores (NaN where it scores none)."""
    return {measure: float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
            for measure, values in scores.items()}


def score_set(images, truths, names):
    """The four measures of one test set's images, each the mean over its items."""
    return set_means(item_scores(images, truths, names))


def difference_interval(ours, theirs, n_resamples=10_000, seed=0):
    """Mean of ``ours - theirs`` over the items both score, and its 95 % paired bootstrap interval.

    Items are resampled with replacement (Efron & Tibshirani 1993, percentile interval). An item's
    identification also depends on the other items of its set, so this is the interval of a set of
    items like these, judged among themselves: what another draw of test items might give.

    Returns
    -------
    (mean, low, high) : tuple of float
        NaN when fewer than 2 items are scored by both.
    """
    difference = np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)
    difference = difference[np.isfinite(difference)]
    if len(difference) < 2:
        return np.nan, np.nan, np.nan
    picks = np.random.default_rng(seed).integers(0, len(difference), (n_resamples, len(difference)))
    low, high = np.quantile(difference[picks].mean(axis=1), [0.025, 0.975])
    return float(difference.mean()), float(low), float(high)


def run_seed(root, seed, preset, app_args, tag):
    """Simulate (once) and run the app; return its items, reconstructions and the baseline's."""
    bids, work, out = root / f"seed-{seed}" / "bids", root / f"seed-{seed}" / "work", root / f"seed-{seed}" / tag
    if not (bids / "dataset_description.json").exists():
        print(f"simulating the {preset} preset, seed {seed}, into {bids}", flush=True)
        simulate_dataset(bids, n_subjects=1, preset=preset, seed=seed)
    # Nipype reuses a cached step whose inputs are unchanged, whatever code computed it: the decoding
    # and reconstruction, the code this bench measures, run again every time (preprocessing stays cached,
    # so the work dir is stamped as this code's: the app would refuse a checkout's edited code otherwise).
    for stale in [*work.glob("sub_*_wf/decode_wf/decode"), *work.glob("sub_*_wf/recon_wf")]:
        shutil.rmtree(stale)
    for folder in work.glob("sub_*_wf"):
        stamp_work_version(work, folder.name.removeprefix("sub_").removesuffix("_wf"))
    argv = [str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation", *app_args]
    print("running: bidsrecon " + " ".join(argv), flush=True)
    # A child process per run: Nipype's MultiProc forks its workers, and a fork of a process whose
    # torch thread pools already ran (the previous seed's run) can hang.
    if subprocess.run([sys.executable, "-m", "bidsrecon", *argv]).returncode != 0:
        raise SystemExit("the app failed; see its error above")
    inputs = decode_node_inputs(work)
    data = app_decoding_data(inputs)
    node = next(Path(work).glob("sub_*_wf/recon_wf/reconstruct"))
    images = np.load(node / "reconstructions.npy", allow_pickle=False)
    items = pd.read_csv(next(Path(work).glob("sub_*_wf/decode_wf/decode")) / "items.tsv", sep="\t")
    if list(items["stimulus"]) != list(data["items"]["stimulus"]):
        raise SystemExit(f"{work}: the decode node's items differ from the bench's")
    baseline, alpha = linear_pixel_baseline(data, images.shape[1], seed=seed)
    truths = load_images([data["stimuli"][name] for name in items["stimulus"]], images.shape[1])
    return items, images, baseline, truths, alpha


def draw_figure(path, rows):
    """A few items per set as a PNG: each row a tuple of image stacks (truths first), drawn as columns."""
    from PIL import Image

    tiles = []
    for stacks in rows:
        tiles.append(np.concatenate([np.concatenate(column, axis=0) for column in zip(*stacks)], axis=1))
    width = max(tile.shape[1] for tile in tiles)
    canvas = np.ones((sum(tile.shape[0] + 4 for tile in tiles), width, 3), np.float32)
    top = 0
    for tile in tiles:
        canvas[top:top + tile.shape[0], :tile.shape[1]] = tile
        top += tile.shape[0] + 4
    Image.fromarray(np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bidsrecon-validity")
    parser.add_argument("--tag", default="out", help="output folder name per seed (one per setting)")
    parser.add_argument("--figure", type=Path, default=None, help="PNG of the first seed's reconstructions")
    parser.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="passed on to bidsrecon (last)")
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    rows, per_item = [], {}
    for seed in args.seeds:
        items, images, baseline, truths, alpha = run_seed(args.root, seed, args.preset, args.app_args, args.tag)
        print(f"seed {seed}: baseline alpha {alpha:g}", flush=True)
        figure_rows = []
        for set_name, group in items.groupby("set", sort=False):
            index = group.index.to_numpy()
            names = list(group["stimulus"])
            for method, recons in (("baseline", baseline), ("bidsrecon", images)):
                scores = per_item[seed, set_name, method] = item_scores(recons[index], truths[index], names)
                rows.append({"seed": seed, "set": set_name, "method": method, **set_means(scores)})
            for size in YARDSTICK_SIZES:
                coarse = resize(resize(truths[index], size), truths.shape[1])
                rows.append({"seed": seed, "set": set_name, "method": f"truth at {size} px",
                             **score_set(coarse, truths[index], names)})
            pick = index[:: max(1, len(index) // 10)][:10]
            figure_rows.append((truths[pick], baseline[pick], images[pick]))
        if args.figure and seed == args.seeds[0]:
            draw_figure(args.figure, figure_rows)
            print(f"figure (per set: truths, baseline, app): {args.figure}")

    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        means = table.groupby(["set", "method"], sort=False)[list(MEASURES)].mean()
        print("\nmean over seeds\n" + means.to_string(float_format=lambda v: f"{v:.3f}"))

    wide = table.pivot_table(index=["seed", "set"], columns="method", values=list(MEASURES))
    losses, clear_losses = [], 0
    for measure in MEASURES:
        difference = wide[(measure, "bidsrecon")] - wide[(measure, "baseline")]
        for (seed, set_name), value in difference.items():
            if np.isfinite(value) and value < -1e-9:
                _, low, high = difference_interval(per_item[seed, set_name, "bidsrecon"][measure],
                                                   per_item[seed, set_name, "baseline"][measure])
                losses.append(f"{set_name}/{measure}/seed {seed} ({value:+.3f}, 95% interval {low:+.3f} to "
                              f"{high:+.3f})")
                clear_losses += high < 0
    misses = []
    for set_name, (measure, target) in TARGETS.items():
        if (set_name, "bidsrecon") in means.index:
            value = means.loc[(set_name, "bidsrecon"), measure]
            if not value >= target:
                misses.append(f"{set_name} {measure} {value:.3f} < {target}")
    print(f"SUMMARY: baseline beaten or matched on every seed, set and measure: "
          f"{'yes' if not losses else 'NO, behind on ' + '; '.join(losses)}; "
          f"of these, behind beyond the items' spread (interval below 0): {clear_losses}; "
          f"targets: {'all met' if not misses else 'MISSED ' + '; '.join(misses)}")
    print(json.dumps({"losses": len(losses), "clear_losses": int(clear_losses), "misses": len(misses)}))


if __name__ == "__main__":
    main()
