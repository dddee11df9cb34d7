"""bench/pixel_stage_limits.py puts the simulator's noise-free responses into the app's voxel units, and its
pRFs into the energy model's pooling."""
import sys
from pathlib import Path

import numpy as np
import torch

from bidsrecon.decoding.prf_energy import pool
from bidsrecon.simulate.ceiling import NoiseFreeResponses

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from pixel_stage_limits import simulator_pooling, true_responses_in_app_units  # noqa: E402


def test_each_app_voxel_gets_its_simulated_voxel_on_its_own_scale():
    rng = np.random.default_rng(0)
    n_train, n_items, n_simulated = 200, 5, 40
    names = [f"image{k}" for k in range(n_train + n_items)]
    responses = rng.standard_normal((len(names), n_simulated))
    noise_free = NoiseFreeResponses(tuple(names), responses, np.ones(n_simulated), np.ones((2, 2, 2), bool))
    # The app's columns: simulated voxels in another order, each on its own scale and offset, with
    # measurement noise on the training means.
    source = rng.permutation(n_simulated)[:25]
    slope, intercept = rng.uniform(0.2, 2.0, 25), rng.normal(0, 1, 25)
    clean = slope * responses[:, source] + intercept
    train_means = clean[:n_train] + rng.normal(0, 0.5, (n_train, 25))
    train, items, match, matched = true_responses_in_app_units(train_means, names[:n_train], names[n_train:],
                                                               noise_free)
    np.testing.assert_array_equal(matched, source)
    np.testing.assert_allclose(items, clean[n_train:], rtol=0.1, atol=0.1)
    np.testing.assert_allclose(train, clean[:n_train], rtol=0.1, atol=0.1)
    expected = [np.corrcoef(train_means[:, j], responses[:n_train, source[j]])[0, 1] for j in range(25)]
    np.testing.assert_allclose(match, expected, atol=1e-9)


def test_each_voxel_pools_at_its_simulated_pRF():
    side = 32
    # Centre x, centre y (up) and SD in image units: the centre, a point up and left, one right and down.
    prfs = np.array([[0.0, 0.0, 0.1], [-0.5, 0.5, 0.05], [0.25, -0.5, 0.08]])
    factors, candidates = simulator_pooling(prfs, side)
    coords = np.arange(side) + 0.5
    columns, rows = np.meshgrid(coords, coords, indexing="xy")
    maps = torch.from_numpy(np.stack([columns, rows, np.ones((side, side))])[None])
    pooled = pool(maps, factors, torch.from_numpy(candidates))[0].numpy()
    np.testing.assert_allclose(pooled[0], [16, 8, 20], atol=1e-6)   # column, in pixels
    np.testing.assert_allclose(pooled[1], [16, 8, 24], atol=1e-6)   # row, from the top
    np.testing.assert_allclose(pooled[2], 1, atol=1e-12)            # each field sums to 1
