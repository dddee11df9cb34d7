"""The pixels pseudo-layer: decoded like a layer, used as the start and a loss term of the inversion."""
import numpy as np
import pytest
import torch

from bidsrecon.decoding import KernelRidgeDecoder
from bidsrecon.decoding.pixels import PIXEL_LAYER, decode_pixels, pixel_size, pixel_targets
from bidsrecon.encoders import get_encoder
from bidsrecon.recon import reconstruct
from bidsrecon.recon.invert import pixel_start
from bidsrecon.recon.loss import pixel_weights
from bidsrecon.recon.problem import _Problem

SIZE = 64


@pytest.fixture(scope="module")
def random_lite0():
    return get_encoder("efficientnet-lite0-random", seed=1)


def _blocky(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 4, 4, 3)).repeat(SIZE // 4, axis=1).repeat(SIZE // 4, axis=2).astype(np.float32)


def test_pixel_targets_are_area_averages():
    images = _blocky(2)
    targets = pixel_targets(images, SIZE)
    assert targets.shape == (2, 3, 32, 32) and pixel_size(SIZE) == 32 and pixel_size(24) == 24
    np.testing.assert_allclose(targets[1, 2, 5, 7], images[1, 10:12, 14:16, 2].mean(), rtol=1e-6)
    # uint8 input is read as 0-255
    np.testing.assert_allclose(pixel_targets(np.round(images * 255).astype(np.uint8), SIZE), targets, atol=1 / 255)


def test_decode_pixels_is_the_weighted_sum_of_training_images():
    targets = pixel_targets(_blocky(3, seed=1), SIZE)
    counts = np.array([1, 2, 1])
    one_hot = np.array([[0.0, 1.0, 0.0]])
    nothing = np.zeros((1, 3))
    decoded, mean, spread = decode_pixels(np.vstack([one_hot, nothing]), targets, counts)
    np.testing.assert_allclose(decoded[0], targets[1], rtol=1e-6)  # coefficients summing to 1: that image
    expected_mean = (targets[0] + 2 * targets[1] + targets[2]) / 4
    np.testing.assert_allclose(decoded[1], expected_mean, rtol=1e-6)  # no coefficients: the training mean
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
    assert spread > 0


def test_pixels_are_decoded_as_any_layer():
    """Voxels that encode the pixels linearly give decoded pixels close to the truth."""
    rng = np.random.default_rng(2)
    # Images of few degrees of freedom (five patterns mixed), so 50 training images can span them.
    patterns = rng.uniform(size=(5, 8, 8, 3)).repeat(SIZE // 8, axis=1).repeat(SIZE // 8, axis=2)
    images = np.einsum("nk,khwc->nhwc", rng.dirichlet(np.ones(5), 60), patterns)
    targets = pixel_targets(images.astype(np.float32), SIZE)
    flat = targets.reshape(60, -1)
    mixing = rng.normal(size=(flat.shape[1], 300))
    image_index = np.repeat(np.arange(50), 2)
    X = flat[image_index] @ mixing + rng.normal(0, 2.0, (100, 300))
    decoder = KernelRidgeDecoder().fit(X, image_index, {PIXEL_LAYER: flat[:50]})
    test = flat[50:] @ mixing
    decoded, _, _ = decode_pixels(decoder.coefficients(test)[PIXEL_LAYER], targets[:50], np.full(50, 2))
    r = [np.corrcoef(d.ravel(), t.ravel())[0, 1] for d, t in zip(decoded, targets[50:])]
    assert min(r) > 0.5


def test_pixel_start_is_the_upsampled_decoded_image():
    pixels = pixel_targets(_blocky(2, seed=3), SIZE)
    start = torch.sigmoid(pixel_start(pixels, SIZE, seed=0))
    assert start.shape == (2, 3, SIZE, SIZE)
    # Inside each 16-px block of the 64-px image the start is the block's decoded colour (clipped
    # away from 0 and 1, where the logit is infinite); jitter and edges move it by little.
    centres = start[:, :, 8::16, 8::16].numpy()
    np.testing.assert_allclose(centres, np.clip(pixels[:, :, 4::8, 4::8], 0.02, 0.98), atol=0.01)


def _upsample(x):
    return torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("coarse", [False, True])
def test_pixel_term_gradient_equals_autograd_of_its_loss(random_lite0, coarse):
    """The loop's closed-form gradient of the pixel term is the gradient of λ‖pool(x) − p̂‖²/‖p̂ − mean‖²;
    with ``coarse`` given (an image optimised at p̂'s size, then upsampled), ``x`` is that image, not the
    pool of its upsampling."""
    images = _blocky(2, seed=4)
    with torch.no_grad():
        features = random_lite0.features(torch.from_numpy(images).permute(0, 3, 1, 2), ["stem"])
    pixels = torch.from_numpy(pixel_targets(_blocky(2, seed=5), SIZE))
    problem = _Problem(random_lite0, {"stem": features["stem"], "pixels": pixels}, False, 0, pixel_weight=3.0)
    problem.weights["stem"] = torch.zeros(2)  # the pixel term alone
    problem.offsets["stem"] = torch.zeros_like(features["stem"])
    side = 32 if coarse else SIZE
    variable = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    objective = problem.objective(_upsample, coarse=lambda x: x) if coarse else problem.objective(lambda x: x)
    loss, grad = objective(variable, torch.arange(2))

    x = variable.clone().requires_grad_(True)
    energy = (pixels - pixels.flatten(1).mean(1).view(-1, 1, 1, 1)).pow(2).flatten(1).sum(1)
    # Weighted as one more layer: 1/energy over the sum of the layers' 1/‖f̂‖² (here one layer).
    inverse_sum = 1 / features["stem"].flatten(1).pow(2).sum(1)
    expected = 3.0 * (torch.nn.functional.adaptive_avg_pool2d(x, 32) - pixels).pow(2).flatten(1).sum(1) / energy
    expected = expected / inverse_sum
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-7)


def test_a_coarse_image_held_by_the_pixel_term_is_the_decoded_image_not_a_sharpened_one(random_lite0):
    from bidsrecon.recon.settings import LbfgsSettings

    with torch.no_grad():
        features = random_lite0.features(torch.from_numpy(_blocky(2, seed=7)).permute(0, 3, 1, 2), ["stem"])
    pixels = pixel_targets(_blocky(2, seed=6), SIZE)
    held = reconstruct(random_lite0, {"stem": features["stem"].numpy()}, SIZE, pixel_target=pixels,
                       pixel_weight=1000.0, settings=LbfgsSettings(n_iter=30, scale=2), progress=False)
    upsampled = _upsample(torch.from_numpy(np.clip(pixels, 0.02, 0.98))).permute(0, 2, 3, 1).numpy()
    # Matching the pool of the upsampled image instead sharpens the blocks' edges: measured 0.0146 that
    # way, 0.0010 this way.
    assert float(np.abs(held - upsampled).mean()) < 0.004


def test_a_flat_pixel_target_gets_no_weight():
    pixels = torch.full((2, 3, 4, 4), 0.5)
    pixels[1, 0, 0, 0] = 0.9
    weights = pixel_weights(pixels, 2.0, {"layer": np.ones((2, 5))})
    assert weights[0] == 0
    # energy 0.4² (1 - 1/48), layers' 1/‖f̂‖² sum 1/5
    assert float(weights[1]) == pytest.approx(2.0 / (0.16 * (1 - 1 / 48) / 5), rel=1e-5)


def test_a_strong_pixel_term_holds_the_image_to_the_decoded_pixels(random_lite0):
    images = _blocky(2, seed=6)
    with torch.no_grad():
        features = random_lite0.features(torch.from_numpy(_blocky(2, seed=7)).permute(0, 3, 1, 2), ["stem", "block1"])
    targets = {name: value.numpy() for name, value in features.items()}  # features of other images
    pixels = pixel_targets(images, SIZE)
    free = reconstruct(random_lite0, targets, SIZE, n_iter=10, progress=False, start="flat")
    held = reconstruct(random_lite0, targets, SIZE, n_iter=10, progress=False, pixel_target=pixels,
                       pixel_weight=100.0)

    def error(result):
        pooled = pixel_targets(result, SIZE)
        return float(np.abs(pooled - np.clip(pixels, 0.02, 0.98)).mean())

    assert error(held) < 0.05 < error(free)


def test_pixel_options_are_checked(random_lite0):
    targets = {"stem": np.zeros((1, 32, 32, 32), np.float32) + 1}
    with pytest.raises(ValueError, match="need a pixel_target"):
        reconstruct(random_lite0, targets, SIZE, n_iter=1, progress=False, start="pixels")
    with pytest.raises(ValueError, match=r"\(1, 3, s, s\)"):
        reconstruct(random_lite0, targets, SIZE, n_iter=1, progress=False, pixel_target=np.zeros((1, 3, 80, 80)))


def test_total_variation_term_gradient_equals_autograd(random_lite0):
    images = _blocky(2, seed=8)
    with torch.no_grad():
        features = random_lite0.features(torch.from_numpy(images).permute(0, 3, 1, 2), ["stem"])
    pixels = torch.from_numpy(pixel_targets(_blocky(2, seed=9), SIZE))
    problem = _Problem(random_lite0, {"stem": features["stem"], "pixels": pixels}, False, 0, pixel_weight=0.0,
                       tv_weight=2.0)
    problem.weights["stem"] = torch.zeros(2)  # the total variation alone
    problem.offsets["stem"] = torch.zeros_like(features["stem"])
    variable = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    loss, grad = problem.objective(lambda x: x)(variable, torch.arange(2))
    x = variable.clone().requires_grad_(True)
    variation = ((x[..., 1:, :] - x[..., :-1, :]) ** 2).flatten(1).sum(1) + ((x[..., 1:] - x[..., :-1]) ** 2).flatten(1).sum(1)
    expected = pixel_weights(pixels, 2.0, {"stem": features["stem"]}) * variation
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-7)


def test_coarse_factor_optimises_a_smaller_image(random_lite0):
    from bidsrecon.recon.settings import LbfgsSettings

    images = _blocky(2, seed=10)
    with torch.no_grad():
        features = random_lite0.features(torch.from_numpy(images).permute(0, 3, 1, 2), ["stem"])
    targets = {"stem": features["stem"].numpy()}
    coarse = reconstruct(random_lite0, targets, SIZE, settings=LbfgsSettings(n_iter=5, scale=4), progress=False,
                         start="flat")
    fine = reconstruct(random_lite0, targets, SIZE, settings=LbfgsSettings(n_iter=5, scale=1), progress=False,
                       start="flat")
    # A 16-px image upsampled bilinearly has far less pixel-to-pixel detail than one of 64 px.
    def detail(images):
        return float(np.abs(np.diff(images, axis=2)).mean())

    assert detail(coarse) < 0.5 * detail(fine)
    with pytest.raises(ValueError, match="fewer than 8 pixels"):
        reconstruct(random_lite0, targets, SIZE, settings=LbfgsSettings(n_iter=1, scale=16), progress=False)


def test_noise_start_and_unclamped_descent(random_lite0):
    from bidsrecon.recon.invert import _start
    from bidsrecon.recon.settings import PixelDescentSettings

    noise = torch.sigmoid(_start("noise", random_lite0, None, 2, SIZE, seed=3))
    assert noise.shape == (2, 3, SIZE, SIZE) and 0.45 < float(noise.mean()) < 0.55 and float(noise.std()) > 0.25
    torch.testing.assert_close(noise, torch.sigmoid(_start("noise", random_lite0, None, 2, SIZE, seed=3)))
    images = _blocky(2, seed=11)
    with torch.no_grad():
        features = random_lite0.features(torch.from_numpy(images).permute(0, 3, 1, 2), ["stem"])
    targets = {"stem": features["stem"].numpy()}
    steep = dict(n_iter=5, lr_start=200.0, decay_start=0.0)  # steps large enough to leave [0, 1]
    clamped = reconstruct(random_lite0, targets, SIZE, optimiser="gd", settings=PixelDescentSettings(**steep),
                          progress=False, start="noise")
    free = reconstruct(random_lite0, targets, SIZE, optimiser="gd", progress=False, start="noise",
                       settings=PixelDescentSettings(**steep, clamp=False))
    assert not np.array_equal(clamped, free)  # the clamp changed the descent
    assert free.min() >= 0 and free.max() <= 1  # the image handed back is in range either way
