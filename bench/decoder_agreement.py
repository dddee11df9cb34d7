"""Decoding accuracy per layer of our kernel ridge decoder next to the lab's per-unit decoder.

What it measures
----------------
On the simulated dataset, how well each layer's features of the test items are decoded by ours,
:class:`~bidsrecon.decoding.KernelRidgeDecoder` fitted exactly as the app fits it
(``DecodeFeatures._decode``: same training samples, CV targets, seed and test items' trial
counts, so the same alphas per layer and count), and by the per-unit mode, :class:`~bidsrecon.decoding.per_unit.PerUnitDecoder` (the
lab's ``fastl2lir``) with the lab's defaults, 500 voxels per unit and alpha 100.

How
---
1. Simulate ``WORK_DIR/bids`` (if absent) and run the app once (outputs in ``WORK_DIR/out``, work
   dir ``WORK_DIR/work``), unless its ``decode`` node already ran the kernel decoder with the
   encoder, layers and seed asked for.
2. Read the decode node's inputs from Nipype's JSON record of them (per-run samples ``.npy`` and
   trials TSVs in the node's order, stimuli TSV, encoder, layers, seed, ``cv_units``,
   ``n_voxels``) and build training samples, image index and test items (test trials of one
   stimulus averaged before decoding) as the node does.
3. One encoder pass draws ``--units`` units per layer (seed ``--seed`` + 1: not the units alpha
   was chosen on) with their features ``F`` of the training images and those of the test images.
   Ours decodes them as ``A F + (1 - A 1) ȳ`` (what ``decode_features`` streams); per-unit is
   fitted on ``F[image_index]`` (one row per trial) and predicts the averaged test items.
4. Scores (:mod:`bidsrecon.evaluation.decoding_accuracy`): profile correlation (per unit, across
   the items of a test set; mean over units) and pattern correlation (per item, across units,
   after z-scoring each unit with the training features' trial-weighted mean and SD; mean over
   items), on each test set and on all test items pooled ("all").

Timings (one thread) exclude the encoder passes, which both decoders need. Ours: fit (alpha
search for all layers at once) and coefficients, shared, then each layer's weighted sum.

Target (issue)
--------------
Ours is not worse than the per-unit mode by more than 0.02 on any layer, in the mean profile
correlation on the ``natural`` test set (the lab's headline measure). The last line,
``SUMMARY``, gives the worst per-layer difference there, "within" or "OVER", and also the worst
difference over every set and both measures.

Usage::

    python bench/decoder_agreement.py [WORK_DIR] [--preset demo|tiny] [--units 2000] [--seed 0]
                                      [--encoder NAME] [--layers L1 L2 ...]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from bidsrecon.cli import main as bidsrecon_main
from bidsrecon.decoding import KernelRidgeDecoder, sample_unit_features
from bidsrecon.decoding.per_unit import PerUnitDecoder
from bidsrecon.decoding.voxel_selection import select_voxels
from bidsrecon.encoders import get_encoder
from bidsrecon.evaluation.decoding_accuracy import pattern_correlations, profile_correlations
from bidsrecon.features.cache import FeatureCache
from bidsrecon.images import load_images
from bidsrecon.simulate import simulate_dataset

TOLERANCE = 0.02
PER_UNIT_VOXELS, PER_UNIT_ALPHA = 500, 100.0
MAIN_SET = "natural"


def decode_node_inputs(work_dir):
    """Inputs of the app's last successful ``decode`` run, or None when it has not run.

    Parameters
    ----------
    work_dir : Path
        The app's ``-w`` folder.

    Returns
    -------
    dict or None
        Input name to value; file inputs as paths (a list of paths for the per-run files), and
        ``node_dir``, the node's folder.
    """
    # Nipype records a node's inputs as JSON [name, value] pairs next to its outputs (files as
    # [path, hash]); "_unfinished" marks a run that did not complete. Never the .pklz pickles.
    records = [path for path in Path(work_dir).glob("sub_*_wf/decode_wf/decode/_0x*.json")
               if not path.name.endswith("_unfinished.json")]
    if not records:
        return None
    if len({path.parent for path in records}) > 1:
        raise SystemExit(f"{work_dir} holds several participants; use a work dir with one.")
    record = max(records, key=lambda path: path.stat().st_mtime)
    inputs = dict(json.loads(record.read_text()), node_dir=record.parent)
    for name in ("samples_files", "trials_files"):
        inputs[name] = [entry[0] for entry in inputs[name]]
    inputs["stimuli_file"] = inputs["stimuli_file"][0]
    return inputs


def run_app_once(root, args):
    """Simulate ``root/bids`` if absent and run the app unless its decode node matches ``args``.

    Returns
    -------
    dict
        :func:`decode_node_inputs` of the run.
    """
    bids, work = root / "bids", root / "work"
    if not bids.exists():
        print(f"simulating the {args.preset} preset (seed {args.seed}) into {bids}", flush=True)
        simulate_dataset(bids, preset=args.preset, seed=args.seed)
    # The kernel decoder's run is the one compared ("method" is absent from older records).
    wanted = {"encoder": args.encoder, "layers": list(args.layers), "seed": args.seed, "method": "kernel"}
    inputs = decode_node_inputs(work)
    if inputs is not None and all(inputs.get(key, "kernel") == value for key, value in wanted.items()):
        print(f"the app's outputs are in {work}: not run again", flush=True)
        return inputs
    argv = [str(bids), str(root / "out"), "participant", "-w", str(work), "--skip-bids-validation",
            "--nprocs", "1", "--seed", str(args.seed), "--encoder", args.encoder, "--decoder", "kernel"]
    argv += ["--layers", *args.layers] if args.layers else []
    print("running: bidsrecon " + " ".join(argv), flush=True)
    if bidsrecon_main(argv) != 0:
        raise SystemExit("the app failed; see its error above")
    return decode_node_inputs(work)


def app_decoding_data(inputs):
    """Training samples, image index and averaged test items, built as ``DecodeFeatures`` does.

    Returns
    -------
    dict
        ``train_samples`` (n_trials, n_voxels), ``image_index``, ``counts`` (trials per training
        image), ``train_names``, ``items`` (DataFrame: set, stimulus, n_trials), ``item_samples``
        (n_items, n_voxels) and ``stimuli`` (stimulus -> image path).
    """
    runs = [np.load(path, allow_pickle=False) for path in inputs["samples_files"]]
    trial_tables = [pd.read_csv(path, sep="\t") for path in inputs["trials_files"]]
    for path, run, table in zip(inputs["samples_files"], runs, trial_tables):
        if len(run) != len(table):  # the node pairs them by position: check it is one row per trial
            raise SystemExit(f"{path}: {len(run)} samples for {len(table)} trials")
    samples, trials = np.concatenate(runs), pd.concat(trial_tables, ignore_index=True)
    training = (trials["set"] == "training").to_numpy()
    train_names, image_index = np.unique(trials.loc[training, "stimulus"], return_inverse=True)
    if inputs.get("n_voxels") and inputs["n_voxels"] < samples.shape[1]:
        samples = samples[:, select_voxels(samples[training], image_index, inputs["n_voxels"])]
    items = trials[~training].groupby(["set", "stimulus"], sort=False).size().rename("n_trials").reset_index()
    item_samples = np.stack([
        samples[~training & (trials["set"] == row.set).to_numpy() & (trials["stimulus"] == row.stimulus).to_numpy()]
        .mean(axis=0) for row in items.itertuples()])
    return {"train_samples": samples[training], "image_index": image_index,
            "counts": np.bincount(image_index, minlength=len(train_names)), "train_names": train_names,
            "items": items, "item_samples": item_samples,
            "stimuli": pd.read_csv(inputs["stimuli_file"], sep="\t").set_index("stimulus")["path"]}


def accuracy_rows(items, decoded, true, train_mean, train_std):
    """Mean profile and pattern correlation on each test set and on all items pooled.

    Returns
    -------
    dict of str to (n_items, profile, pattern)
    """
    scopes = {name: (items["set"] == name).to_numpy() for name in items["set"].unique()}
    scopes["all"] = np.ones(len(items), bool)
    return {name: (int(rows.sum()),
                   np.nanmean(profile_correlations(decoded[rows], true[rows])),
                   np.nanmean(pattern_correlations(decoded[rows], true[rows], train_mean, train_std)))
            for name, rows in scopes.items()}


def main(argv=None):
    """Run the app if needed, fit both decoders, print the table per layer and the SUMMARY line.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("work_dir", nargs="?", type=Path,
                        default=Path(tempfile.gettempdir()) / "bidsrecon-decoder-agreement")
    parser.add_argument("--preset", choices=("demo", "tiny"), default="demo")
    parser.add_argument("--units", type=int, default=2000, help="units sampled per layer to score")
    parser.add_argument("--seed", type=int, default=0, help="simulation and app seed")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--layers", nargs="+", default=[], help="default: the encoder's")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine; also keeps the timings single-threaded
    start = time.perf_counter()

    inputs = run_app_once(args.work_dir.resolve(), args)
    data = app_decoding_data(inputs)
    items, counts, image_index = data["items"], data["counts"], data["image_index"]
    encoder = get_encoder(inputs["encoder"], weights_file=inputs["encoder_weights"] or None,
                          seed=inputs["seed"])
    layers = inputs["layers"] or list(encoder.default_layers)
    train_images = load_images([data["stimuli"][name] for name in data["train_names"]], inputs["image_size"])
    item_images = load_images([data["stimuli"][name] for name in items["stimulus"]], inputs["image_size"])
    cache = None
    if inputs.get("feature_cache"):  # a float16 cache rounds the CV targets: read them as the app did
        cache = FeatureCache.for_encoder(inputs["feature_cache"], encoder,
                                         dtype=inputs.get("feature_cache_dtype", "float32"))
    cv_targets, _ = sample_unit_features(encoder, train_images, layers, n_units=inputs["cv_units"],
                                         seed=inputs["seed"], cache=cache)
    features, _ = sample_unit_features(encoder, np.concatenate([train_images, item_images]), layers,
                                       n_units=args.units, seed=args.seed + 1)
    n_train = len(train_images)
    print(f"\n{len(data['train_samples'])} training trials of {n_train} images x "
          f"{data['train_samples'].shape[1]} voxels; {len(items)} test items "
          f"({', '.join(f'{s} {n}' for s, n in items['set'].value_counts(sort=False).items())}); "
          f"encoder {inputs['encoder']} at {inputs['image_size']} px; {args.units} units per layer scored")
    print("diff = ours - per-unit; profile r: per unit across the set's items; pattern r: per item "
          "across units (z-scored by the training features); 'all' pools every test item")

    with threadpool_limits(limits=1):  # one BLAS thread for both decoders: fair and polite
        tick = time.perf_counter()
        test_trials = items["n_trials"].to_numpy()
        kernel = KernelRidgeDecoder(random_state=inputs["seed"]).fit(data["train_samples"], image_index,
                                                                      cv_targets, test_trials=test_trials)
        coefficients = kernel.coefficients(data["item_samples"], test_trials)
        kernel_fit_s = time.perf_counter() - tick
        # The alphas of the decoder the app saved, printed next to ours: equal ones show the fit is the app's.
        app_alpha = json.loads(next(inputs["node_dir"].glob("*_decoder.json")).read_text()).get("AlphaByTestTrials", {})
        natural_diffs, all_diffs, timings = {}, [], []
        for layer in layers:
            F = features[layer][:n_train].astype(np.float64)
            true = features[layer][n_train:]
            tick = time.perf_counter()
            weights = counts / counts.sum()
            train_mean = weights @ F
            A = coefficients[layer]
            ours = A @ F + (1.0 - A.sum(axis=1))[:, None] * train_mean
            weighted_sum_s, tick = time.perf_counter() - tick, time.perf_counter()
            per_unit = PerUnitDecoder(n_voxels=PER_UNIT_VOXELS, alpha=PER_UNIT_ALPHA).fit(
                data["train_samples"], F[image_index]).predict(data["item_samples"])
            per_unit_s = time.perf_counter() - tick
            timings.append((weighted_sum_s, per_unit_s))
            train_std = np.sqrt(weights @ (F - train_mean) ** 2)  # of the trials, as the lab z-scores
            ours_rows = accuracy_rows(items, ours, true, train_mean, train_std)
            per_unit_rows = accuracy_rows(items, per_unit, true, train_mean, train_std)

            chosen = ", ".join(
                f"{count} trials {alpha:.4g} (grid {int(np.flatnonzero(kernel.alphas_ == alpha)[0]) + 1}/"
                f"{len(kernel.alphas_)}, CV r {kernel.cv_scores_by_trials_[layer][count].max():.3f})"
                for count, alpha in kernel.alpha_by_trials_[layer].items())
            theirs = {int(count): alpha for count, alpha in app_alpha.get(layer, {}).items()}
            print(f"\nlayer {layer}: kernel alpha for items of {chosen}; the app's "
                  f"{'the same' if theirs == kernel.alpha_by_trials_[layer] else theirs or 'not recorded'}; "
                  f"time: ours {weighted_sum_s:.2f} s + shared fit, per-unit {per_unit_s:.1f} s")
            print(f"  {'set':<9}{'items':>6} | {'profile r: ours':>15}{'per-unit':>9}{'diff':>8} | "
                  f"{'pattern r: ours':>15}{'per-unit':>9}{'diff':>8}")
            for scope, (n_items, profile, pattern) in ours_rows.items():
                _, theirs_profile, theirs_pattern = per_unit_rows[scope]
                diffs = (profile - theirs_profile, pattern - theirs_pattern)
                print(f"  {scope:<9}{n_items:>6} | {profile:>15.3f}{theirs_profile:>9.3f}{diffs[0]:>+8.3f} | "
                      f"{pattern:>15.3f}{theirs_pattern:>9.3f}{diffs[1]:>+8.3f}")
                all_diffs += [(diffs[0], f"{scope} profile, {layer}"), (diffs[1], f"{scope} pattern, {layer}")]
                if scope == MAIN_SET:
                    natural_diffs[layer] = diffs[0]

    weighted_sum_total_s, per_unit_total_s = np.sum(timings, axis=0)
    print(f"\ntime (encoder passes excluded, 1 thread): kernel ridge {kernel_fit_s + weighted_sum_total_s:.1f} s "
          f"(fit + coefficients {kernel_fit_s:.1f} s for all layers, weighted sums {weighted_sum_total_s:.2f} s); "
          f"per-unit {per_unit_total_s:.1f} s; bench wall time {time.perf_counter() - start:.0f} s")
    if not natural_diffs:
        raise SystemExit(f"no {MAIN_SET!r} test set in the data: nothing to compare")
    worst_layer = min(natural_diffs, key=natural_diffs.get)
    worst_any = min(all_diffs)
    over = [layer for layer, diff in natural_diffs.items() if diff < -TOLERANCE]
    verdict = f"OVER on {', '.join(over)}" if over else "within"
    print(f"SUMMARY worst per-layer difference (ours - per-unit, {MAIN_SET} profile r): "
          f"{natural_diffs[worst_layer]:+.4f} on {worst_layer}; ours within {TOLERANCE} of the per-unit mode on "
          f"every layer: {verdict}; worst over every set and both measures {worst_any[0]:+.4f} ({worst_any[1]})")


if __name__ == "__main__":
    main()
