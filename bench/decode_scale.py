"""Full-scale decoding: every unit of all 19 VGG19 layers at 224 px, timed and measured.

The paper's scale (REFERENCE.md §3): 6,000 training samples (1,200 unique images × 5 repeats)
of 11,700 voxels, and 50 test items. The images are random 8 x 8 colour patterns enlarged to 224
px, the voxels random linear mixes of the patterns plus noise, the test items held-out images
(``synthesise``); the network is ``vgg19-random`` (the same arithmetic as the ImageNet weights).
The pipeline is the app's (:func:`bidsrecon.decoding.stage.fit_and_decode`'s schedule):

1. the penalty's pass through the encoder: 1,000 sampled units per layer of every training image,
   or with ``--penalty-share S`` of a seeded share of them
   (:func:`bidsrecon.decoding.stage.penalty_images`), or with ``--penalty-size P`` of every image
   resized to P px (112: a quarter of a pass at 224), with ``--cache`` writing their features to a
   :class:`~bidsrecon.features.cache.FeatureCache` on the way;
2. fit the kernel ridge decoder (z-scoring, kernel, grouped 5-fold cross-validation of alpha on
   the penalty images' samples);
3. coefficients of the 50 test items;
4. the decoding pass: every unit of every layer, running the encoder over every training image
   (the app's default, ``--feature-cache off``), or reading the cached features with ``--cache``
   (layers left out of the cache with ``--cache-from`` are recomputed); it keeps the sampled
   units of every image.

Then, untimed, the check of issue 18: alpha chosen by the cross-validation on every image (the
schedule before, which spent a whole pass on it), each layer decoded again where that alpha
differs, and each layer's decoding accuracy (mean profile correlation with the held-out images'
true features) with both. Targets (issue 18): wall time ≤ 1.5 × one forward pass of the training
images, ≤ 8 GB, accuracy within 0.005 of the alpha chosen on every image.

It prints a table of wall time per stage, the time inside the encoder's forward passes and in
cache reads and writes, the peak resident memory (``ru_maxrss``, the whole process) and the
cache's size, and a last line with the headline figures. Targets of issue 4: ≤ 10 minutes,
≤ 8 GB, ≥ 60% of the wall time inside the encoder's forwards. The time of one forward pass over
the training images is the floor no decoder can go under; the table reports it as well.

Then, in the same run, the baselines of ``bench/decode_baselines.py`` on a problem of the same
shape: the time per unit of fastl2lir (500 voxels per unit), himalaya's kernel ridge and
scikit-learn's Ridge on a sample of units from three layers, each projected to all 14,861,288
units, and our speed-up against each (target: ≥ 50× against fastl2lir). fastl2lir and himalaya need
numpy < 2: give ``--baseline-python`` an interpreter that has them (that file says how to make one).

With ``--float16-error`` the decoded features are computed a second time without the cache
(an extra encoder pass, after the timed pipeline) to measure the error float16 storage causes.

Usage::

    python bench/decode_scale.py --quick     # a tenth of the scale: 1-2 minutes
    python bench/decode_scale.py --baseline-python /tmp/fl2l_venv/bin/python
                                             # full scale: about 20 minutes on a quiet 2-core machine
    python bench/decode_scale.py --cache float16   # with the feature cache: 36 GB of (temporary)
                                             # disk at full scale, and slower here (disk-bound)
    python bench/decode_scale.py --cache float16 --cache-from conv4_1   # deep layers only
"""
import argparse
import ctypes
import ctypes.util
import os
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bidsrecon.decoding import KernelRidgeDecoder, decode_features, iter_feature_batches, sample_unit_features
from bidsrecon.decoding.memory import budget_within, plan_decoding, resident_bytes
from bidsrecon.decoding.stage import penalty_images
from bidsrecon.encoders import get_encoder
from bidsrecon.features.cache import FeatureCache
from bidsrecon.features.correlation import profile_correlation
from bidsrecon.images import resize_images

FULL = {"n_images": 1200, "repeats": 5, "n_voxels": 11_700, "n_items": 50}
QUICK = {"n_images": 120, "repeats": 5, "n_voxels": 1_170, "n_items": 5}
#: Trials averaged into each test item (ds001506's natural test images: 24 each).
TEST_TRIALS = 24
IMAGE_SIZE = 224
CV_UNITS = 1000
TARGET_SECONDS, TARGET_GB, TARGET_SHARE = 600.0, 8.0, 0.60
#: Issue 18: the whole decoding within 1.5 one forward passes of the training images, each layer's
#: decoding accuracy within 0.005 of the penalty chosen on every image.
TARGET_FLOOR_RATIO, TARGET_AGREEMENT = 1.5, 0.005
TARGET_SPEEDUP = 50.0  # against fastl2lir, projected to every VGG19 unit
#: glibc's mallopt parameter of the size above which allocations are mmapped.
M_MMAP_THRESHOLD = -3


class TimedEncoder:
    """Delegates to an encoder and adds up the wall time spent in its forward passes (and in those of
    full-size images apart, which give the time of one pass over the training images)."""

    def __init__(self, encoder):
        self._encoder = encoder
        self.seconds = self.full_size_seconds = 0.0
        self.images = self.full_size_images = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def features(self, images, layers=None):
        start = time.perf_counter()
        features = self._encoder.features(images, layers=layers)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.images += len(images)
        if images.shape[-1] == IMAGE_SIZE:
            self.full_size_seconds += seconds
            self.full_size_images += len(images)
        return features


class TimedCache(FeatureCache):
    """A :class:`FeatureCache` that adds up the wall time of its reads and writes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_seconds = self.write_seconds = 0.0

    def load(self, *args):
        start = time.perf_counter()
        features = super().load(*args)
        self.read_seconds += time.perf_counter() - start
        return features

    def store(self, *args):
        start = time.perf_counter()
        features = super().store(*args)
        self.write_seconds += time.perf_counter() - start
        return features


def synthesise(scale, seed=0):
    """Images with structure, samples that carry it, and test items of held-out images.

    Each image is a random 8 x 8 colour pattern enlarged to 224 px plus pixel noise, and each
    voxel a random linear mix of the patterns' 192 values plus an image-specific part the features
    do not share; a sample adds trial noise. So the penalty's cross-validation has something to
    find (on patternless data every alpha scores zero), and the decoded features can be scored
    against the held-out images' true features.

    Returns
    -------
    images : ndarray (n_images, 224, 224, 3) uint8
    samples, image_index : the training trials
    test_items : ndarray (n_items, n_voxels), averages of TEST_TRIALS trials of the test images
    test_images : ndarray (n_items, 224, 224, 3) uint8
    """
    rng = np.random.default_rng(seed)
    n_all = scale["n_images"] + scale["n_items"]
    patterns = rng.random((n_all, 8, 8, 3), dtype=np.float32)
    enlarged = np.repeat(np.repeat(patterns, IMAGE_SIZE // 8, axis=1), IMAGE_SIZE // 8, axis=2)
    # uint8, as the app holds its stimuli (a quarter of float32's memory).
    all_images = np.clip(255 * (0.8 * enlarged + 0.2 * rng.random(enlarged.shape, dtype=np.float32)),
                         0, 255).astype(np.uint8)
    mixing = rng.standard_normal((8 * 8 * 3, scale["n_voxels"]), dtype=np.float32) / np.sqrt(8 * 8 * 3)
    voxel_patterns = ((patterns.reshape(n_all, -1) - 0.5) * np.sqrt(12)) @ mixing
    voxel_patterns += 0.5 * rng.standard_normal(voxel_patterns.shape, dtype=np.float32)
    image_index = rng.permutation(np.repeat(np.arange(scale["n_images"]), scale["repeats"]))
    samples = voxel_patterns[image_index] + 2 * rng.standard_normal(
        (len(image_index), scale["n_voxels"]), dtype=np.float32)
    held_out = voxel_patterns[scale["n_images"]:]
    test_items = held_out + 2 / np.sqrt(TEST_TRIALS) * rng.standard_normal(held_out.shape, dtype=np.float32)
    return all_images[:scale["n_images"]], samples, image_index, test_items, all_images[scale["n_images"]:]


def _report_stage(seconds):
    stage, stage_seconds = list(seconds.items())[-1]
    print(f"  {stage}: {stage_seconds:.1f} s (peak so far {peak_memory_gb():.2f} GB)",
          flush=True)


def return_freed_memory_to_the_system():
    """Make glibc return every large freed array to the system at once.

    By default glibc raises its mmap threshold after large frees (up to 32 MB), so arrays freed
    by one stage stay in the heap: the resident size then overstates what is held and the
    decoding's budget (the 8 GB target minus the resident size) comes out too small.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def peak_memory_gb():
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def folder_gb(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file()) / 1e9


def run_pipeline(images, samples, image_index, test_items, cache, batch_size, penalty_share=None,
                 penalty_size=None):
    """The app's decoding (:func:`bidsrecon.decoding.stage.fit_and_decode`'s schedule), timed stage by
    stage: the penalty's pass over the penalty images, the fit, the coefficients, then one pass over
    every training image that decodes every unit and keeps the sampled units for the check."""
    encoder = TimedEncoder(get_encoder("vgg19-random"))
    layers = list(encoder.layers)
    seconds = {}
    start = time.perf_counter()
    cv_images = None if penalty_share is None else penalty_images(len(images), 0, penalty_share)
    chosen = slice(None) if cv_images is None else cv_images
    penalty_pass_images = images[chosen] if penalty_size is None else resize_images(images[chosen], penalty_size)
    cv_targets, unit_indices = sample_unit_features(
        encoder, penalty_pass_images, layers, n_units=CV_UNITS, batch_size=batch_size,
        cache=cache if penalty_size is None else None)
    n_chosen = len(images) if cv_images is None else len(cv_images)
    penalty_side = penalty_pass_images.shape[1]
    del penalty_pass_images  # not held through the decoding pass
    seconds[f"penalty pass: units of {n_chosen} images of {penalty_side} px"
            + (" (+ cache)" if cache and penalty_size is None else "")] = time.perf_counter() - start
    if penalty_size is not None:
        # The decoding pass keeps units of the full-size images for the check; draw them there.
        _, unit_indices = sample_unit_features(encoder, images[:1], layers, n_units=CV_UNITS, batch_size=1)
    _report_stage(seconds)

    start = time.perf_counter()
    test_trials = np.full(len(test_items), TEST_TRIALS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Layer .* chose the")  # the grid's edge
        decoder = KernelRidgeDecoder().fit(samples, image_index, cv_targets, test_trials=test_trials,
                                           cv_images=cv_images)
    seconds["fit: z-score, kernel, 5-fold CV of alpha"] = time.perf_counter() - start
    _report_stage(seconds)

    start = time.perf_counter()
    coefficients = decoder.coefficients(test_items, test_trials)
    seconds["coefficients of the test items"] = time.perf_counter() - start
    _report_stage(seconds)

    start = time.perf_counter()
    counts = np.bincount(image_index, minlength=len(images))
    # What decoding may add to what the process already holds, within the 8 GB target, less the sampled
    # units of every image that the pass keeps for the (untimed) check, which the app does not keep.
    kept_for_check = 4 * len(images) * sum(len(indices) for indices in unit_indices.values())
    memory_budget = budget_within(TARGET_GB * 1e9) - kept_for_check
    print(f"  resident before decoding {resident_bytes() / 1e9:.2f} GB; decoding budget "
          f"{memory_budget / 1e9:.2f} GB", flush=True)
    sampled = dict(unit_indices)
    decoded, train_mean, _ = decode_features(encoder, images, coefficients, counts,
                                             batch_size=batch_size, progress=False,
                                             cache=cache, memory_budget=memory_budget, sampled_units=sampled)
    seconds["decoding pass: every unit" + (" (read cache)" if cache else "")] = time.perf_counter() - start
    layer_units = {layer: mean.size for layer, mean in train_mean.items()}
    decoding_batch, groups = plan_decoding(layer_units, {layer: len(test_items) for layer in layers},
                                           batch_size, memory_budget, cached=cache is not None)
    return seconds, decoded, train_mean, decoder, sampled, counts, encoder, (memory_budget, groups, decoding_batch)


def agreement_with_every_image(images, samples, image_index, test_items, test_images, decoder, sampled,
                               decoded, counts, batch_size):
    """Untimed: the penalty chosen on every training image (the schedule before issue 18: a whole
    pass for it), and each layer's decoding accuracy with both penalties.

    The cross-validation on every image uses the sampled units the decoding pass kept; where it
    chooses another alpha, that layer is decoded again with it (one more pass over those layers).
    Accuracy is the profile correlation of each test item's decoded features with its image's true
    ones, averaged over items.

    Returns
    -------
    dict of str to (alpha on the penalty images, alpha on every image, accuracy, accuracy before)
    """
    test_trials = np.full(len(test_items), TEST_TRIALS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Layer .* chose the")
        before = KernelRidgeDecoder().fit(samples, image_index, {layer: features for layer, (_, features)
                                                                  in sampled.items()}, test_trials=test_trials)
    differing = [layer for layer in decoded if before.alpha_[layer] != decoder.alpha_[layer]]
    decoded_before = dict(decoded)
    if differing:
        coefficients = before.coefficients(test_items, test_trials)
        again, _, _ = decode_features(get_encoder("vgg19-random"), images,
                                      {layer: coefficients[layer] for layer in differing}, counts,
                                      batch_size=batch_size, progress=False)
        decoded_before.update(again)
    truth = decode_truth(test_images, list(decoded), batch_size)
    return {layer: (decoder.alpha_[layer], before.alpha_[layer],
                    _mean_profile(decoded[layer], truth[layer]), _mean_profile(decoded_before[layer], truth[layer]))
            for layer in decoded}


def _mean_profile(decoded, truth):
    """Mean over units of each unit's correlation across the test items (constant units left out)."""
    return float(np.nanmean(profile_correlation(decoded.reshape(len(decoded), -1), truth)))


def decode_truth(test_images, layers, batch_size):
    """The true features of the test images, flattened per layer."""
    encoder = get_encoder("vgg19-random")
    rows = {layer: [] for layer in layers}
    for _, batch in iter_feature_batches(encoder, test_images, layers, batch_size):
        for layer in layers:
            rows[layer].append(batch[layer].reshape(len(batch[layer]), -1))
    return {layer: np.concatenate(parts) for layer, parts in rows.items()}


def float16_error(images, coefficients, counts, decoded, batch_size):
    """Error of the float16-cached decoded features against an uncached float32 pass.

    Returns, per layer, the error's norm relative to the decoded features' norm, and its RMS
    relative to the spread of the training features (the scale reconstruction matches).
    """
    exact, _, spread = decode_features(get_encoder("vgg19-random"), images, coefficients,
                                       counts, batch_size=batch_size, progress=False)
    rows = {}
    for layer, reference in exact.items():
        error = decoded[layer] - reference
        rows[layer] = (np.linalg.norm(error) / np.linalg.norm(reference),
                       np.sqrt(np.mean(error.astype(np.float64) ** 2)) / spread[layer])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the scale")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cache-dir", type=Path,
                        help="cache folder (default: a temporary folder, deleted at the end)")
    parser.add_argument("--cache", choices=("off", "float16", "float32"), default="off",
                        help="feature cache and its storage (default: off, as the app's default)")
    parser.add_argument("--cache-from", default="conv1_1",
                        help="first layer kept in the cache; earlier ones are recomputed")
    parser.add_argument("--float16-error", action="store_true",
                        help="also measure the error of float16 storage (one more pass)")
    parser.add_argument("--baseline-python", metavar="PYTHON",
                        help="interpreter with numpy<2, fastl2lir and himalaya for the baselines' rows "
                        "(see bench/decode_baselines.py)")
    parser.add_argument("--penalty-share", type=float, default=None,
                        help="choose the penalty on this share of the training images (at least 150), one "
                        "pass plus that share, instead of every image (the app's schedule: two passes)")
    parser.add_argument("--penalty-size", type=int, default=None,
                        help="run the penalty's pass on the training images resized to this many pixels a side "
                        "(e.g. 112: a quarter of a 224-px pass) instead of at 224")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the baselines (fastl2lir, himalaya, scikit-learn) after the pipeline")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    return_freed_memory_to_the_system()

    images, samples, image_index, test_items, test_images = synthesise(scale)
    n_samples, n_voxels = samples.shape
    print(f"{scale['n_images']} images of {IMAGE_SIZE} px, {n_samples} samples x {n_voxels} "
          f"voxels, {scale['n_items']} test items, batch {args.batch_size}; load average "
          f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}", flush=True)

    cache_root = args.cache_dir or Path(tempfile.mkdtemp(prefix="decode_scale_"))
    try:
        layers = get_encoder("vgg19-random").layers
        cache = None if args.cache == "off" else TimedCache.for_encoder(
            cache_root, get_encoder("vgg19-random"), dtype=args.cache,
            layers=layers[layers.index(args.cache_from):])
        start = time.perf_counter()
        seconds, decoded, train_mean, decoder, sampled, counts, encoder, plan = run_pipeline(
            images, samples, image_index, test_items, cache, args.batch_size, args.penalty_share, args.penalty_size)
        wall = time.perf_counter() - start
        cache_gb = folder_gb(cache_root)
        peak_gb = peak_memory_gb()
        errors = (float16_error(images, decoder.coefficients(test_items, np.full(len(test_items), TEST_TRIALS)),
                                counts, decoded, args.batch_size)
                  if args.float16_error else None)
        print("checking the penalty against every image's cross-validation (untimed) ...", flush=True)
        agreement = agreement_with_every_image(images, samples, image_index, test_items, test_images, decoder,
                                               sampled, decoded, counts, args.batch_size)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_root, ignore_errors=True)

    n_units = sum(mean.size for mean in train_mean.values())
    one_pass = encoder.full_size_seconds * len(images) / encoder.full_size_images
    share = encoder.seconds / wall
    print(f"\n{'stage':<44}{'seconds':>10}")
    for stage, stage_seconds in seconds.items():
        print(f"{stage:<44}{stage_seconds:>10.1f}")
    print(f"{'total wall time':<44}{wall:>10.1f}")
    print(f"{'  inside encoder forwards':<44}{encoder.seconds:>10.1f}"
          f"   ({encoder.images} images run, {100 * share:.0f}% of wall)")
    print(f"{'  one forward pass of the training images':<44}{one_pass:>10.1f}"
          f"   (the floor: {100 * one_pass / wall:.0f}% of wall)")
    if cache is not None:
        print(f"{'  cache reads / writes (background threads)':<44}"
              f"{cache.read_seconds:>5.1f} / {cache.write_seconds:.1f}"
              f"   ({cache_gb:.1f} GB {args.cache}, layers {args.cache_from}..fc8)")
    print(f"{'peak resident memory (GB)':<44}{peak_gb:>10.2f}"
          f"   (decoding budget {plan[0] / 1e9:.2f} GB: {len(plan[1])} layer group(s), "
          f"batch {plan[2]})")
    print(f"{'units decoded per item':<44}{n_units:>10,}")
    print(f"\n{'layer':<10}{'alpha':>12}{'alpha (every image)':>21}{'accuracy':>10}{'before':>9}{'difference':>12}")
    for layer, (alpha, alpha_before, accuracy, accuracy_before) in agreement.items():
        print(f"{layer:<10}{alpha:>12.4g}{alpha_before:>21.4g}{accuracy:>10.4f}{accuracy_before:>9.4f}"
              f"{accuracy - accuracy_before:>+12.4f}")
    worst = max(abs(accuracy - before) for _, _, accuracy, before in agreement.values())
    same_alpha = sum(alpha == before for alpha, before, _, _ in agreement.values())
    if errors:
        print(f"\n{'layer':<10}{'float16 error / |decoded|':>28}"
              f"{'RMS error / training spread':>30}")
        for layer, (relative, of_spread) in errors.items():
            print(f"{layer:<10}{relative:>28.2e}{of_spread:>30.2e}")
    speedups = {}
    if not args.no_baselines:
        # After the pipeline, whose peak memory is already read: the baselines, on a problem of the
        # same shape, each projected to every VGG19 unit (bench/decode_baselines.py).
        import decode_baselines

        print("\nbaselines (bench/decode_baselines.py, same samples x voxels):", flush=True)
        speedups = decode_baselines.main(["--quick"] * args.quick + (
            ["--baseline-python", args.baseline_python] if args.baseline_python else []))
    verdict = ", ".join([
        f"wall {'OK' if wall <= TARGET_SECONDS else 'OVER'}",
        f"wall/floor {'OK' if wall <= TARGET_FLOOR_RATIO * one_pass else 'OVER'}",
        f"agreement {'OK' if worst <= TARGET_AGREEMENT else 'OVER'}",
        f"memory {'OK' if peak_gb <= TARGET_GB else 'OVER'}",
        f"forward share {'OK' if share >= TARGET_SHARE else 'UNDER'}"]
        + ([f"vs fastl2lir {'OK' if speedups['fastl2lir 0.11'] >= TARGET_SPEEDUP else 'UNDER'}"]
           if "fastl2lir 0.11" in speedups else []))
    compared = "".join(f", {speedup:.0f}x faster than {method}" for method, speedup in speedups.items()
                       if method != "kernel ridge (bidsrecon)")
    print(f"SUMMARY {'quick' if args.quick else 'full'} {scale['n_images']} images/{n_samples}x"
          f"{n_voxels}/{scale['n_items']} items, 19 VGG19 layers ({n_units:,} units): "
          f"{wall:.0f} s wall, {encoder.seconds:.0f} s in forwards ({100 * share:.0f}%), one-pass "
          f"floor {one_pass:.0f} s ({wall / one_pass:.2f}x), peak {peak_gb:.2f} GB, cache {cache_gb:.1f} GB, "
          f"alpha as on every image in {same_alpha}/{len(agreement)} layers, accuracy within {worst:.4f}{compared} "
          f"[{verdict}], load average {os.getloadavg()[1]:.1f} (5 min) at the end")


if __name__ == "__main__":
    main()
