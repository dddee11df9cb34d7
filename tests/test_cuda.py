"""Reconstruction on a CUDA GPU gives what it gives on the CPU (skipped without a GPU).

These run on a GPU machine when one is at hand (see bench/recon_speed.py for the timings); CI
has none and skips them.
"""
import numpy as np
import pytest
import torch
from test_recon import _pixel_correlation, _true_features, _unseen_photograph

from bidsrecon.encoders import get_encoder
from bidsrecon.recon import reconstruct
from bidsrecon.recon.generator import random_generator
from bidsrecon.recon.settings import GeneratorDescentSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def photograph():
    return _unseen_photograph(128)


def _inversion(device, photograph, **options):
    encoder = get_encoder("efficientnet-lite0", device=device)
    targets = _true_features(encoder, photograph, encoder.default_layers) if device == "cpu" else {
        name: value.cpu().numpy() for name, value in encoder.features(
            torch.from_numpy(photograph).permute(0, 3, 1, 2), encoder.default_layers).items()}
    return reconstruct(encoder, targets, 128, progress=False, **options)


def test_cuda_inversion_matches_the_cpu(photograph):
    on_cpu = _inversion("cpu", photograph)
    on_gpu = _inversion("cuda", photograph)
    assert _pixel_correlation(on_gpu, photograph)[0] >= 0.8
    # Not bit-equal (different kernels), but the same image.
    assert _pixel_correlation(on_gpu, on_cpu)[0] >= 0.98
    assert np.abs(on_gpu - on_cpu).mean() < 0.02


def test_cuda_mixed_precision_still_inverts(photograph):
    on_gpu = _inversion("cuda", photograph, mixed_precision=True)
    assert _pixel_correlation(on_gpu, photograph)[0] >= 0.8


def test_cuda_gd_and_generator_optimisers_run(photograph):
    assert _pixel_correlation(_inversion("cuda", photograph, optimiser="gd"), photograph)[0] >= 0.8
    images = _inversion("cuda", photograph, optimiser="generator", generator=random_generator(1, device="cuda"),
                        settings=GeneratorDescentSettings(n_iter=20))
    assert images.shape == photograph.shape and np.isfinite(images).all()


def test_cuda_vgg19_inversion_at_224_px():
    encoder = get_encoder("vgg19-random", device="cuda")
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(size=(4, 3, 8, 8)).astype(np.float32))
    images = torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear")
    with torch.no_grad():
        targets = {name: value.cpu().numpy() for name, value in encoder.features(images.cuda()).items()}
    recon = reconstruct(encoder, targets, 224, progress=False, batch_size=4)
    assert _pixel_correlation(recon, images.permute(0, 2, 3, 1).numpy()).min() >= 0.9


def test_an_lbfgs_iteration_whose_steps_are_all_accepted_waits_for_the_gpu_once():
    """The loop's one host synchronisation per iteration (bidsrecon.recon.lbfgs): every other mask
    is applied on the device. A convex quadratic from a good start accepts every first step."""
    import warnings

    from bidsrecon.recon.lbfgs import minimise_lbfgs

    scales = torch.linspace(1.0, 2.0, 8, device="cuda")[:, None]

    def objective(x, items):
        return 0.5 * (scales[items] * x * x).sum(1), scales[items] * x

    start = torch.ones(8, 16, device="cuda")
    minimise_lbfgs(objective, start, 2)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, evaluations = minimise_lbfgs(objective, start, 5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert evaluations == 6  # no backtracking: the start's evaluation and one per iteration
    synchronising = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(synchronising) <= 5, [str(w.message) for w in synchronising]
