"""Time per unit of the decoders issue 4 compares, projected to every unit of VGG19.

On a problem shaped like ds001506 (1,200 training images × 5 repeats = 6,000 samples, 11,700
voxels, 50 averaged test items; random data with a shared latent structure), each decoder is
fitted on a sample of units from three layers (conv1_1, conv3_1, fc6) and predicts the test
items. Its cost is split into a fixed part, paid once per subject whatever the number of units,
and a cost per unit; the projection to all 14,861,288 units of VGG19's 19 layers is
``fixed + per unit × 14,861,288``. That assumes each baseline's fixed part is paid once, the most
favourable use of it (scikit-learn and himalaya would in practice recompute their kernel for
each chunk of units that fits in memory), so the speed-ups are lower bounds. Computing the
network features of the training images is needed by every method and is left out of all rows.

Rows
----
- ``per-unit (ours)``: :class:`bidsrecon.decoding.per_unit.PerUnitDecoder`'s steps, 500 voxels per
  unit, alpha 100. Fixed: z-scoring and ``XᵀX``; per unit: correlations, selection, the Cholesky
  solve and the prediction (:func:`fit_unit_chunk`, :func:`predict_unit_chunk`).
- ``fastl2lir 0.11``: the lab's package, same settings (timed only where it can run: it needs
  numpy < 2, so in a separate environment given by ``--baseline-python``).
- ``himalaya KernelRidge`` and ``sklearn Ridge``: one alpha, linear kernel / dense ridge with an
  intercept, fitted on a few units and on the whole sample; the difference gives the cost per unit.
- ``kernel ridge (bidsrecon)``: :class:`KernelRidgeDecoder` ``fit`` (alpha chosen by grouped
  cross-validation on 1,000 sampled units per layer) and ``coefficients`` are the fixed part;
  the cost per unit is :func:`decode_features`'s accumulation of the weighted sum over the training
  images, measured with a fake encoder that hands out stored random features (its own time is
  subtracted).

Usage::

    python bench/decode_baselines.py                   # full scale, about 10 minutes
    python bench/decode_baselines.py --quick           # a tenth of the samples and voxels, < 1 min
    python bench/decode_baselines.py --baseline-python /tmp/fl2l_venv/bin/python

``--baseline-python`` names an interpreter with numpy < 2, ``fastl2lir`` and ``himalaya``, for
example ``python3 -m venv /tmp/fl2l_venv && /tmp/fl2l_venv/bin/pip install "numpy<2"
fastl2lir==0.11 himalaya packaging``; the rows it can run are run there, one process after the
main one so that they do not share the cores. This file imports only numpy at the top
so that such an environment can run it.
"""
import argparse
import importlib.util
import json
import subprocess
import time

import numpy as np

VGG19_UNITS = 14_861_288
LAYERS = ("conv1_1", "conv3_1", "fc6")
N_LATENT = 50
#: The lab's penalty; every row uses it (no row's cost depends on it).
ALPHA = 100.0
N_SELECTED = 500
#: Stored random features the kernel ridge pass accumulates at both scales: a sample of units of
#: each layer (conv1_1 and conv3_1 on a smaller grid), large enough that per-batch overheads do
#: not count as cost per unit.
FEATURE_SHAPES = {"conv1_1": (64, 32, 32), "conv3_1": (256, 16, 16), "fc6": (4096,)}
#: Units whose fit gives a baseline's fixed cost (a fit needs at least one unit).
FEW_UNITS = 8
SCALES = {
    "full": {"n_images": 1200, "repeats": 5, "n_voxels": 11_700, "n_test": 50, "repeats_timed": 1,
             "units": 1000, "per_unit_units": 256, "fastl2lir_units": 1000, "cv_units": 1000},
    "quick": {"n_images": 120, "repeats": 5, "n_voxels": 1170, "n_test": 50, "repeats_timed": 2,
              "units": 1000, "per_unit_units": 64, "fastl2lir_units": 20, "cv_units": 200},
}
WORKER_METHODS = ("fastl2lir 0.11", "himalaya KernelRidge")


def make_problem(scale, seed=0):
    """Training and test samples with a latent structure shared with the features.

    Returns
    -------
    dict
        ``X`` (n_samples, n_voxels), ``X_test`` (n_test, n_voxels), ``image_index``
        (n_samples,) and ``latent`` (n_images, N_LATENT), from which features are drawn.
    """
    rng = np.random.default_rng(seed)
    n_images, n_voxels = scale["n_images"], scale["n_voxels"]
    image_index = np.tile(np.arange(n_images), scale["repeats"])
    latent = rng.standard_normal((n_images, N_LATENT))
    mixing = 0.3 * rng.standard_normal((N_LATENT, n_voxels))
    X = latent[image_index] @ mixing + rng.standard_normal((len(image_index), n_voxels))
    test_latent = rng.standard_normal((scale["n_test"], N_LATENT))
    # Test items are averages over repeats: less noise.
    X_test = test_latent @ mixing + rng.standard_normal((scale["n_test"], n_voxels)) / np.sqrt(
        scale["repeats"])
    return {"X": X, "X_test": X_test, "image_index": image_index, "latent": latent}


def image_features(latent, n_units, layer):
    """Features of ``n_units`` units of ``layer`` for each training image (latent + noise)."""
    rng = np.random.default_rng([1, LAYERS.index(layer)])
    return (latent @ rng.standard_normal((N_LATENT, n_units))
            + rng.standard_normal((len(latent), n_units)))


def sampled_trial_features(problem, units_per_layer):
    """Per-trial features of ``units_per_layer`` units from each of :data:`LAYERS`, side by side."""
    return np.hstack([image_features(problem["latent"], units_per_layer, layer)
                      for layer in LAYERS])[problem["image_index"]]


def projection(fixed_s, per_unit_s):
    """Seconds to decode every VGG19 unit."""
    return fixed_s + per_unit_s * VGG19_UNITS


def two_fit_costs(fit_and_predict, X, X_test, Y, repeats):
    """Fixed and per-unit cost from fits on :data:`FEW_UNITS` units and on all of ``Y``.

    A first small fit, untimed, takes one-off costs (imports, first calls) out. Each fit is
    timed ``repeats`` times and the fastest kept: on a shared machine noise only adds time.
    A per-unit cost lost in that noise is NaN.
    """
    fit_and_predict(X[:50, :100], X_test[:, :100], Y[:50, :FEW_UNITS])
    best_s = {FEW_UNITS: np.inf, Y.shape[1]: np.inf}
    for _ in range(repeats):
        for units in best_s:
            start = time.perf_counter()
            fit_and_predict(X, X_test, Y[:, :units])
            best_s[units] = min(best_s[units], time.perf_counter() - start)
    per_unit_s = (best_s[Y.shape[1]] - best_s[FEW_UNITS]) / (Y.shape[1] - FEW_UNITS)
    if per_unit_s <= 0:
        return {"units": Y.shape[1], "fixed_s": best_s[FEW_UNITS], "per_unit_s": float("nan")}
    return {"units": Y.shape[1], "fixed_s": best_s[FEW_UNITS] - FEW_UNITS * per_unit_s,
            "per_unit_s": per_unit_s}


def fastest(function, repeats):
    """Shortest wall time of ``repeats`` calls of ``function()``, and the last call's result."""
    best_s = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best_s = min(best_s, time.perf_counter() - start)
    return best_s, result


def time_per_unit_ours(problem, scale):
    from bidsrecon.decoding.per_unit import fit_unit_chunk, predict_unit_chunk, training_gram

    chunk_size = 64

    def prepare():
        mean, std = problem["X"].mean(axis=0), problem["X"].std(axis=0, ddof=1)
        X = (problem["X"] - mean) / std
        return X, (problem["X_test"] - mean) / std, training_gram(X)

    def fit_and_predict():
        for first in range(0, Y.shape[1], chunk_size):
            chunk = Y[:, first:first + chunk_size]
            chunk = (chunk - chunk.mean(axis=0)) / chunk.std(axis=0, ddof=1)
            selected, coef, intercept = fit_unit_chunk(X, chunk, gram, N_SELECTED, ALPHA)
            predict_unit_chunk(X_test, selected, coef, intercept)

    fixed_s, (X, X_test, gram) = fastest(prepare, scale["repeats_timed"])
    Y = sampled_trial_features(problem, scale["per_unit_units"])
    units_s, _ = fastest(fit_and_predict, scale["repeats_timed"])
    return {"units": Y.shape[1], "fixed_s": fixed_s, "per_unit_s": units_s / Y.shape[1]}


def time_fastl2lir(problem, scale):
    from fastl2lir import FastL2LiR

    mean, std = problem["X"].mean(axis=0), problem["X"].std(axis=0, ddof=1)
    X, X_test = (problem["X"] - mean) / std, (problem["X_test"] - mean) / std

    def fit_and_predict(X, X_test, Y):
        Y = (Y - Y.mean(axis=0)) / Y.std(axis=0, ddof=1)
        FastL2LiR().fit(X, Y, alpha=ALPHA, n_feat=N_SELECTED).predict(X_test)

    return two_fit_costs(fit_and_predict, X, X_test,
                         sampled_trial_features(problem, scale["fastl2lir_units"]),
                         scale["repeats_timed"])


def time_himalaya(problem, scale):
    from himalaya.kernel_ridge import KernelRidge

    def fit_and_predict(X, X_test, Y):
        KernelRidge(alpha=ALPHA, kernel="linear", fit_intercept=True).fit(X, Y).predict(X_test)

    return two_fit_costs(fit_and_predict, problem["X"], problem["X_test"],
                         sampled_trial_features(problem, scale["units"]), scale["repeats_timed"])


def time_sklearn_ridge(problem, scale):
    from sklearn.linear_model import Ridge

    def fit_and_predict(X, X_test, Y):
        Ridge(alpha=ALPHA).fit(X, Y).predict(X_test)

    return two_fit_costs(fit_and_predict, problem["X"], problem["X_test"],
                         sampled_trial_features(problem, scale["units"]), scale["repeats_timed"])


class StoredFeatures:
    """A fake encoder handing out stored random features, so that its own cost is next to nil.

    Follows the encoder interface of :mod:`bidsrecon.decoding.stream`; ``seconds`` sums the time
    spent inside :meth:`features`, to be subtracted from the pass.
    """

    def __init__(self, feature_shapes, batch_size, seed=0):
        import torch

        self.layers = tuple(feature_shapes)
        self.device = torch.device("cpu")
        generator = torch.Generator().manual_seed(seed)
        self.stored = {layer: torch.randn((batch_size,) + tuple(shape), generator=generator)
                       for layer, shape in feature_shapes.items()}
        self.seconds = 0.0

    def features(self, images, layers):
        start = time.perf_counter()
        features = {layer: self.stored[layer][:len(images)] for layer in layers}
        self.seconds += time.perf_counter() - start
        return features


def time_kernel_ridge(problem, scale):
    from bidsrecon.decoding import KernelRidgeDecoder, decode_features

    cv_targets = {layer: image_features(problem["latent"], scale["cv_units"], layer)
                  for layer in LAYERS}

    # As the app fits it: alphas for the trials the test items average (here the training repeats).
    test_trials = np.full(len(problem["X_test"]), scale["repeats"])

    def fit():
        decoder = KernelRidgeDecoder().fit(problem["X"], problem["image_index"], cv_targets,
                                           test_trials=test_trials)
        return decoder, decoder.coefficients(problem["X_test"], test_trials)

    fixed_s, (decoder, coefficients) = fastest(fit, scale["repeats_timed"])
    batch_size = 16
    encoder = StoredFeatures(FEATURE_SHAPES, batch_size)
    # The fake encoder ignores the pixels: 1-pixel images keep their handling out of the timing.
    images = np.zeros((scale["n_images"], 1, 1, 3), np.float32)
    counts = np.bincount(problem["image_index"], minlength=scale["n_images"])

    def accumulate():
        encoder.seconds = 0.0
        decode_features(encoder, images, coefficients, counts, batch_size=batch_size,
                        progress=False)
        return encoder.seconds

    # encoder_s is the last pass's time inside the fake encoder (microseconds: it slices stored
    # tensors), not necessarily the fastest pass's; the difference is below any noise here.
    accumulate_s, encoder_s = fastest(accumulate, scale["repeats_timed"])
    accumulate_s -= encoder_s
    n_units = sum(int(np.prod(shape)) for shape in FEATURE_SHAPES.values())
    return {"units": n_units, "fixed_s": fixed_s, "per_unit_s": accumulate_s / n_units,
            "alphas": {layer: round(alpha, 1) for layer, alpha in decoder.alpha_.items()}}


TIMERS = {"per-unit (ours)": time_per_unit_ours, "fastl2lir 0.11": time_fastl2lir,
          "himalaya KernelRidge": time_himalaya, "sklearn Ridge": time_sklearn_ridge,
          "kernel ridge (bidsrecon)": time_kernel_ridge}
IMPORTS = {"fastl2lir 0.11": "fastl2lir", "himalaya KernelRidge": "himalaya"}


def importable(method):
    """Whether this interpreter can run ``method``'s row."""
    module = IMPORTS.get(method)
    return module is None or importlib.util.find_spec(module) is not None


def run_worker(scale_name):
    """Time the rows this interpreter can run that the main one cannot; print them as JSON."""
    problem = make_problem(SCALES[scale_name])
    results = {method: TIMERS[method](problem, SCALES[scale_name])
               for method in WORKER_METHODS if importable(method)}
    print(json.dumps(results))


def run_in(python, scale_name):
    """Rows timed by ``python`` running this file as a worker (its stderr shown on failure only)."""
    completed = subprocess.run([python, __file__, "--worker", "--scale", scale_name],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{python} failed on the worker rows:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_table(results, missing, scale, wall_s):
    ours = results["kernel ridge (bidsrecon)"]
    ours_total = projection(ours["fixed_s"], ours["per_unit_s"])
    print(f"\n{scale['n_images'] * scale['repeats']} samples x {scale['n_voxels']} voxels, "
          f"{scale['n_test']} test items; projected to {VGG19_UNITS:,} VGG19 units "
          "(encoder passes excluded)")
    header = (f"{'method':<26}{'units':>7}{'fixed s':>10}{'per unit ms':>13}"
              f"{'projected h':>13}{'ours faster':>13}{'per unit':>10}")
    print(header)
    print("-" * len(header))
    speedups = {}
    for method, cost in results.items():
        if np.isnan(cost["per_unit_s"]):
            print(f"{method:<26}{cost['units']:>7}{cost['fixed_s']:>10.2f}"
                  "   per-unit cost lost in timing noise (use more units or the full scale)")
            continue
        total = projection(cost["fixed_s"], cost["per_unit_s"])
        speedups[method] = total / ours_total
        print(f"{method:<26}{cost['units']:>7}{cost['fixed_s']:>10.2f}"
              f"{cost['per_unit_s'] * 1e3:>13.4f}{total / 3600:>13.3f}"
              f"{speedups[method]:>12.0f}x{cost['per_unit_s'] / ours['per_unit_s']:>9.0f}x")
    for method in missing:
        print(f"{method:<26} not run: not importable here (give --baseline-python)")
    print(f"kernel ridge alphas chosen: {ours['alphas']}; bench wall time {wall_s:.0f} s")
    compared = ", ".join(f"{speedup:.0f}x vs {method}" for method, speedup in speedups.items()
                         if method != "kernel ridge (bidsrecon)")
    print(f"summary: all {VGG19_UNITS:,} units from {scale['n_images'] * scale['repeats']}x"
          f"{scale['n_voxels']}: kernel ridge {ours_total / 60:.1f} min projected; {compared}")
    return speedups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the samples and voxels (under a minute)")
    parser.add_argument("--baseline-python", metavar="PYTHON",
                        help="interpreter with numpy<2, fastl2lir and himalaya for those rows")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale", choices=SCALES, default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale_name = "quick" if args.quick else args.scale
    if args.worker:
        run_worker(scale_name)
        return

    start = time.perf_counter()
    scale = SCALES[scale_name]
    problem = make_problem(scale)
    results = {}
    for method, timer in TIMERS.items():
        if importable(method):
            print(f"timing {method} ...", end=" ", flush=True)
            results[method] = timer(problem, scale)
            print(f"fixed {results[method]['fixed_s']:.1f} s, "
                  f"{results[method]['per_unit_s'] * 1e3:.4f} ms per unit", flush=True)
    missing = [method for method in TIMERS if method not in results]
    if missing and args.baseline_python:
        del problem  # the worker makes its own copy; do not hold two
        print(f"timing {', '.join(missing)} in {args.baseline_python} ...", flush=True)
        results.update(run_in(args.baseline_python, scale_name))
        missing = [method for method in TIMERS if method not in results]
    results = {method: results[method] for method in TIMERS if method in results}
    return print_table(results, missing, scale, time.perf_counter() - start)


if __name__ == "__main__":
    main()
