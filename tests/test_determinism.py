"""The same command gives the same bytes whatever the number of threads, processes or plugin.

Multithreaded kernels (oneDNN's backward convolution, BLAS, LAPACK) round differently with
another thread count, and a batched convolution with other batch-mates; bidsrecon.parallel
splits the work into tasks fixed by the data, each on one thread. These tests fail on code
that lets a thread count or a batch reach the numbers.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from bidsrecon.decoding import KernelRidgeDecoder, iter_feature_batches
from bidsrecon.encoders import get_encoder
from bidsrecon.features.cache import FeatureCache
from bidsrecon.interfaces.threads import limited_threads
from bidsrecon.parallel import map_tasks, task_threads
from bidsrecon.recon import reconstruct

SIZE = 32


@pytest.fixture(scope="module")
def lite0():
    return get_encoder("efficientnet-lite0-random", seed=0)


def _images(n_images, seed=0):
    return np.random.default_rng(seed).random((n_images, SIZE, SIZE, 3), dtype=np.float32)


def _with_threads(n_threads, function, node=True):
    """``function()`` given ``n_threads`` the way a node is (``limited_threads``), or else (``node``
    false) with torch set to ``n_threads``, as a caller of the library sets it."""
    if node:
        with limited_threads(n_threads):
            return function()
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        return function()
    finally:
        torch.set_num_threads(previous)


def _features(encoder, images, layers, batch_size, cache=None):
    batches = list(iter_feature_batches(encoder, images, layers, batch_size, cache=cache))
    return {layer: np.concatenate([batch[layer] for _, batch in batches]) for layer in layers}


def test_map_tasks_keeps_the_order_and_raises_once_the_started_tasks_ended():
    started, ended = [], []

    def task(value):
        started.append(value)
        time.sleep(0.01)
        if value == 2:
            raise ValueError("two")
        ended.append(value)
        return value

    with task_threads(3):
        assert map_tasks(lambda value: value * 10, range(7)) == [0, 10, 20, 30, 40, 50, 60]
        with pytest.raises(ValueError, match="two"):
            map_tasks(task, range(40))
        assert sorted(ended) == sorted(set(started) - {2})  # no task left running
        assert len(started) < 40  # the tasks not yet started were cancelled
        assert torch.get_num_threads() == 1  # the libraries run on one thread inside
    assert map_tasks(lambda value: -value, [1, 2]) == [-1, -2]  # outside a block: in turn


def test_an_images_features_do_not_depend_on_its_batch_the_cache_or_the_threads(lite0, tmp_path):
    layers = list(lite0.default_layers)
    images = _images(7)
    alone = _with_threads(1, lambda: _features(lite0, images, layers, batch_size=1))
    batched = _with_threads(3, lambda: _features(lite0, images, layers, batch_size=5))
    cache = FeatureCache.for_encoder(tmp_path, lite0)
    _features(lite0, images[[1, 4]], layers, batch_size=2, cache=cache)  # two images cached first
    partly_cached = _with_threads(2, lambda: _features(lite0, images, layers, batch_size=4, cache=cache))
    for layer in layers:
        assert np.array_equal(batched[layer], alone[layer]), layer
        assert np.array_equal(partly_cached[layer], alone[layer]), layer


def test_kernel_ridge_decoder_is_the_same_bits_on_one_and_three_threads():
    rng = np.random.default_rng(0)
    image_index = np.repeat(np.arange(60), 5)
    X = rng.standard_normal((len(image_index), 500))
    cv_targets = {layer: rng.standard_normal((60, 50)) for layer in ("a", "b")}
    X_test, test_trials = rng.standard_normal((6, 500)), np.array([1, 2, 2, 4, 4, 4])

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alphas at the grid's edge for random data
            decoder = KernelRidgeDecoder().fit(X, image_index, cv_targets, test_trials=test_trials)
        return decoder, decoder.coefficients(X_test, test_trials)

    (one, one_coefficients), (three, three_coefficients) = _with_threads(1, fit), _with_threads(3, fit)
    assert one.alpha_by_trials_ == three.alpha_by_trials_
    for layer in cv_targets:
        assert np.array_equal(one.cv_scores_[layer], three.cv_scores_[layer])
        assert np.array_equal(one_coefficients[layer], three_coefficients[layer])


@pytest.mark.parametrize("optimiser, node", [("lbfgs", True), ("gd", True), ("lbfgs", False)])
def test_reconstruction_is_the_same_bits_whatever_the_threads_and_batch(lite0, optimiser, node):
    layers = ("stem", "block1", "block2")
    images = _images(5, seed=1)
    with torch.no_grad():
        targets = {name: value.numpy() for name, value in
                   lite0.features(torch.from_numpy(images).permute(0, 3, 1, 2), layers).items()}
    pixels = images.transpose(0, 3, 1, 2).reshape(5, 3, 8, 4, 8, 4).mean(axis=(3, 5))
    options = {"optimiser": optimiser, "n_iter": 6, "progress": False, "seed": 3, "pixel_target": pixels,
               "pixel_weight": 10.0, "tv_weight": 1.0}
    one = _with_threads(1, lambda: reconstruct(lite0, targets, SIZE, batch_size=5, **options), node)
    three = _with_threads(3, lambda: reconstruct(lite0, targets, SIZE, batch_size=2, **options), node)
    assert np.array_equal(one, three)


# End to end: the tiny dataset's two subjects with --nprocs 1 (Nipype's Linear plugin, one
# thread), --nprocs 2 (MultiProc, two threads a step) and a Linear plugin file with two threads.

#: Lines of the run record that name the run itself (its times and its command line).
_RUN_RECORD = ("Command", "Started", "Finished", "WallSeconds")
_HTML_RUN_RECORD = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"), "<time>"),
    (re.compile(r"\d+:\d\d:\d\d \(h:mm:ss\)"), "<duration>"),
    (re.compile(r"(<dt>WallSeconds</dt>\s*<dd>)[0-9.]+"), r"\1<seconds>"),
]


def _run(bids, out, work, extra):
    command = [sys.executable, "-c", "import sys; from bidsrecon.cli import main; sys.exit(main(sys.argv[1:]))",
               str(bids), str(out), "participant", "-w", str(work), "--encoder", "efficientnet-lite0-random",
               "--image-size", "32", "--iterations", "10", "--skip-bids-validation", *extra]
    # A child process each: a MultiProc fork after an in-process torch run can hang.
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _comparable(path, extra):
    """The file's bytes, less what records the run itself: its times and its command line."""
    data = path.read_bytes()
    if path.name.endswith("_desc-provenance_log.json"):
        record = json.loads(data)
        assert record["Command"][-len(extra):] == list(extra)
        return json.dumps({key: value for key, value in record.items() if key not in _RUN_RECORD}).encode()
    if path.name.endswith("_desc-settings_log.toml"):  # the options that differ between the runs, left out
        return b"\n".join(line for line in data.splitlines()
                          if line.split(b" = ")[0] not in (b"nprocs", b"omp-nthreads", b"use-plugin"))
    if path.suffix == ".html":
        text = data.decode().replace(" " + " ".join(extra), "")
        for pattern, replacement in _HTML_RUN_RECORD:
            text = pattern.sub(replacement, text)
        return text.encode()
    return data


def _digests(folder, extra):
    return {str(path.relative_to(folder)): hashlib.sha256(_comparable(path, extra)).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_nprocs_and_plugin_give_the_same_bytes(tmp_path):
    from bidsrecon.simulate import simulate_dataset

    bids = simulate_dataset(tmp_path / "bids", n_subjects=2, preset="tiny", seed=0)
    plugin = tmp_path / "linear.yml"
    plugin.write_text("plugin: Linear\n")
    # The same output and work paths for every run, so that the command lines differ in the
    # options compared only.
    out, work = tmp_path / "out", tmp_path / "work"
    runs = {"--nprocs 1": ["--nprocs", "1"], "--nprocs 2": ["--nprocs", "2"],
            "Linear plugin, --nprocs 2": ["--nprocs", "2", "--use-plugin", str(plugin)]}
    digests = {}
    for name, extra in runs.items():
        _run(bids, out, work, extra)
        digests[name] = _digests(out, extra)
        shutil.rmtree(out)
        shutil.rmtree(work)

    reference_name, reference = next(iter(digests.items()))
    assert len(reference) > 100 and any(name.endswith(".png") for name in reference)
    for name, files in digests.items():
        assert sorted(files) == sorted(reference), f"{name} wrote other files than {reference_name}"
        differing = sorted(path for path in files if files[path] != reference[path])
        assert not differing, f"{name} differs from {reference_name} in {len(differing)} files: {differing}"
