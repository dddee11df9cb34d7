"""Layer weights, spread correction and feature inversion (bidsrecon.recon)."""
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from bidsrecon.encoders import get_encoder, resolve_device
from bidsrecon.encoders.vgg19 import default_weights_path
from bidsrecon.errors import BidsReconError
from bidsrecon.features.spread import item_spread
from bidsrecon.images import load_images
from bidsrecon.parallel import task_threads
from bidsrecon.recon import correct_spread, feature_loss, layer_weights, reconstruct
from bidsrecon.recon.descent import gaussian_blur, minimise_momentum
from bidsrecon.recon.generator import random_generator
from bidsrecon.recon.lbfgs import MAX_BACKTRACKS, minimise_lbfgs
from bidsrecon.recon.loss import feature_loss_and_output_gradients, gradient_offsets
from bidsrecon.recon.problem import _Problem
from bidsrecon.recon.settings import GeneratorDescentSettings, PixelDescentSettings

SMALL = 32
FEW_LAYERS = ("stem", "block1", "block2")


@pytest.fixture(scope="module")
def random_lite0():
    return get_encoder("efficientnet-lite0-random", seed=1)


def _true_features(encoder, images, layers):
    with torch.no_grad():
        features = encoder.features(torch.from_numpy(images).permute(0, 3, 1, 2), layers)
    return {name: value.numpy() for name, value in features.items()}


def _loss(encoder, images, targets):
    """Mean loss per item of (n, H, W, 3) images against numpy targets."""
    torch_targets = {name: torch.from_numpy(value) for name, value in targets.items()}
    with torch.no_grad():
        features = encoder.features(torch.from_numpy(images).permute(0, 3, 1, 2), targets)
        return float(feature_loss(features, torch_targets, layer_weights(targets)).mean())


def _pixel_correlation(reconstructions, originals):
    return np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1]
                     for a, b in zip(reconstructions, originals)])


# ---------------------------------------------------------------- layer weights

def test_closed_form_output_gradients_equal_autograd_of_the_loss(random_lite0):
    """The loop hands the loss's gradient per layer to one backward pass; it must be the loss's gradient."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, SMALL, SMALL, generator=generator)
    targets = _true_features(random_lite0, np.random.default_rng(1).random((3, SMALL, SMALL, 3), np.float32),
                             FEW_LAYERS)
    targets = {name: torch.from_numpy(value) for name, value in targets.items()}
    targets[FEW_LAYERS[1]][0] = 0  # a layer of weight 0 for the first item
    with pytest.warns(UserWarning, match="all zero"):
        weights = layer_weights(targets)

    def gradient(closed_form):
        variable = images.clone().requires_grad_(True)
        features = random_lite0.features(variable, FEW_LAYERS)
        if not closed_form:
            loss = feature_loss(features, targets, weights)
            return loss.detach(), torch.autograd.grad(loss.sum(), variable)[0]
        loss, output_gradients = feature_loss_and_output_gradients(features, gradient_offsets(targets, weights),
                                                                   weights)
        return loss, torch.autograd.grad([features[n] for n in FEW_LAYERS], variable,
                                         grad_outputs=[output_gradients[n] for n in FEW_LAYERS])[0]

    (loss, grad), (expected_loss, expected_grad) = gradient(True), gradient(False)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6 * float(expected_grad.abs().max()))
    assert float(expected_grad.abs().max()) > 0


def test_layer_weights_are_inverse_squared_norms_summing_to_one():
    targets = {"a": np.ones((2, 4)), "b": np.full((2, 3, 2, 2), 2.0)}
    targets["a"][1] *= 3
    weights = layer_weights(targets)
    total = weights["a"] + weights["b"]
    torch.testing.assert_close(total, torch.ones(2))
    # ‖a‖² = 4 and 36, ‖b‖² = 48 for both items.
    np.testing.assert_allclose(weights["a"] / weights["b"], [48 / 4, 48 / 36], rtol=1e-6)


def test_all_zero_layer_gets_no_weight_and_a_warning():
    targets = {"conv": np.ones((2, 3, 4, 4)), "fc": np.ones((2, 5))}
    targets["fc"][1] = 0
    with pytest.warns(UserWarning, match=r"'fc'.*\[1\]"):
        weights = layer_weights(targets)
    assert weights["fc"][1] == 0 and weights["conv"][1] == 1
    assert torch.isfinite(weights["fc"]).all() and weights["fc"][0] > 0


def test_item_with_no_features_at_all_is_refused():
    targets = {"fc": np.zeros((1, 5))}
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="nothing to reconstruct"):
        layer_weights(targets)


# ---------------------------------------------------------------- spread correction

@pytest.mark.parametrize("item_shape", [(6, 5, 5), (40,)])
def test_correct_spread_restores_the_training_spread(item_shape):
    rng = np.random.default_rng(0)
    mean = rng.normal(size=item_shape)
    true = mean + rng.normal(scale=2.0, size=(3, *item_shape))
    shrunk = mean + 0.2 * (true - mean)  # what ridge and averaging do to decoded features
    train_spread = float(item_spread(true - mean).mean())

    corrected = correct_spread({"layer": shrunk}, {"layer": mean}, {"layer": train_spread})

    centred = corrected["layer"] - mean
    np.testing.assert_allclose(item_spread(centred), train_spread, rtol=1e-5)
    # Only the scale changes: the pattern around the mean is the decoded one.
    for corrected_item, shrunk_item in zip(centred, shrunk - mean):
        assert np.corrcoef(corrected_item.ravel(), shrunk_item.ravel())[0, 1] > 0.9999


def test_correct_spread_leaves_an_item_at_the_mean():
    mean = np.arange(6.0)
    decoded = np.stack([mean, mean + np.linspace(-1, 1, 6)])
    corrected = correct_spread({"fc": decoded}, {"fc": mean}, {"fc": 2.0})
    assert np.all(np.isfinite(corrected["fc"]))
    np.testing.assert_allclose(corrected["fc"][0], mean)


def test_correct_spread_needs_statistics_for_every_layer():
    with pytest.raises(ValueError, match="fc7"):
        correct_spread({"fc7": np.ones((1, 3))}, {}, {"fc7": 1.0})


# ---------------------------------------------------------------- reconstruct

@pytest.fixture(scope="module")
def small_problem(random_lite0):
    rng = np.random.default_rng(0)
    smooth = rng.uniform(size=(3, 4, 4, 3)).repeat(SMALL // 4, axis=1).repeat(SMALL // 4, axis=2)
    images = smooth.astype(np.float32)
    return images, _true_features(random_lite0, images, FEW_LAYERS)


def test_reconstruct_is_deterministic_and_reduces_the_loss(random_lite0, small_problem):
    images, targets = small_problem
    first = reconstruct(random_lite0, targets, SMALL, n_iter=15, seed=4, progress=False,
                        batch_size=2)
    again = reconstruct(random_lite0, targets, SMALL, n_iter=15, seed=4, progress=False,
                        batch_size=2)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (3, SMALL, SMALL, 3) and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1

    start = np.broadcast_to(np.float32(random_lite0.mean_rgb), images.shape).copy()
    assert _loss(random_lite0, first, targets) < 0.5 * _loss(random_lite0, start, targets)
    # L-BFGS did not stop at iteration 0: the pixels moved well away from the flat start.
    assert np.abs(first - start).max() > 0.1


def test_reconstruct_shows_progress_on_stderr(random_lite0, small_problem, capsys):
    _, targets = small_problem
    reconstruct(random_lite0, {"stem": targets["stem"][:1]}, SMALL, n_iter=2, progress=True)
    assert "loss=" in capsys.readouterr().err


def test_reconstruct_checks_target_shapes(random_lite0, small_problem):
    _, targets = small_problem
    with pytest.raises(ValueError, match="'stem'"):
        reconstruct(random_lite0, {"stem": targets["stem"]}, 64, n_iter=1, progress=False)
    with pytest.raises(ValueError, match="same number of items"):
        reconstruct(random_lite0, {"stem": targets["stem"], "block1": targets["block1"][:1]},
                    SMALL, n_iter=1, progress=False)


def test_inverting_true_features_recovers_photographs(tmp_path):
    # The ImageNet weights, their default layers and the paper's 200 iterations (~2 s here).
    encoder = get_encoder("efficientnet-lite0")
    paths = []
    for name in ["chelsea", "coffee", "rocket", "astronaut"]:
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1])
    photographs = load_images(paths, 64)
    targets = _true_features(encoder, photographs, encoder.default_layers)

    reconstructions = reconstruct(encoder, targets, 64, n_iter=200, progress=False)

    assert _pixel_correlation(reconstructions, photographs).min() >= 0.8


def _unseen_photograph(size):
    """Grace Hopper's portrait, shipped with matplotlib: used nowhere else in bidsrecon."""
    from matplotlib import cbook
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return (np.asarray(resized, dtype=np.float32) / 255)[None]


_REAL_ENCODERS = [
    pytest.param("efficientnet-lite0", "lbfgs"),
    pytest.param("efficientnet-lite0", "gd"),
    pytest.param("vgg19", "lbfgs", marks=[pytest.mark.slow, pytest.mark.skipif(
        not default_weights_path().is_file(), reason="no VGG19 ImageNet weights here")]),
]


@pytest.mark.parametrize("encoder_name, optimiser", _REAL_ENCODERS)
def test_inverting_true_features_of_an_unseen_photograph_at_128_px(encoder_name, optimiser):
    encoder = get_encoder(encoder_name)
    photograph = _unseen_photograph(128)
    targets = _true_features(encoder, photograph, encoder.default_layers)

    reconstruction = reconstruct(encoder, targets, 128, optimiser=optimiser, progress=False)

    assert _pixel_correlation(reconstruction, photograph)[0] >= 0.8


# ---------------------------------------------------------------- optimisers

def _quadratic(centres, curvatures):
    """Per-item f(x) = Σ c ⊙ (x − centre)² / 2, an objective as the optimisers take it."""
    def objective(variable, items):
        difference = variable - centres[items]
        return 0.5 * (curvatures[items] * difference ** 2).sum(1), curvatures[items] * difference
    return objective


def test_lbfgs_finds_each_items_minimum_on_its_own():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=generator, dtype=torch.float64)
    # Conditioning from 1 to 1e3, different for every item.
    curvatures = torch.logspace(0, 3, 20, dtype=torch.float64)[torch.stack(
        [torch.randperm(20, generator=generator) for _ in range(3)])]
    objective = _quadratic(centres, curvatures)
    # As fast as scipy's L-BFGS-B here: loss ~1e-3 after 60 iterations, ~1e-10 after 300.
    together, _ = minimise_lbfgs(objective, torch.zeros(3, 20, dtype=torch.float64), 300)
    torch.testing.assert_close(together, centres, atol=1e-4, rtol=0)
    # The same items one at a time take the very same path.
    for item in range(3):
        alone, _ = minimise_lbfgs(_quadratic(centres[[item]], curvatures[[item]]),
                                  torch.zeros(1, 20, dtype=torch.float64), 300)
        torch.testing.assert_close(alone[0], together[item], atol=1e-12, rtol=0)


def test_lbfgs_stops_an_item_whose_line_search_fails_without_history():
    """An item no step can improve (its loss is flat, its gradient is not: rounding noise) is
    evaluated for one whole line search and then left alone; its batch-mate is not held up."""
    centres = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
    quadratic = _quadratic(centres, torch.ones(1, 3, dtype=torch.float64))
    evaluations = {0: 0, 1: 0}

    def objective(variable, items):
        loss, grad = torch.zeros(len(items), dtype=torch.float64), torch.ones_like(variable)
        for row, item in enumerate(items.tolist()):
            evaluations[item] += 1
            if item == 0:
                loss[row], grad[row] = (value[0] for value in quadratic(variable[[row]], torch.tensor([0])))
        return loss, grad

    start = torch.zeros(2, 3, dtype=torch.float64)
    result, _ = minimise_lbfgs(objective, start, 50)
    torch.testing.assert_close(result[0], centres[0])
    assert torch.equal(result[1], start[1])
    # The start's evaluation and one line search of MAX_BACKTRACKS + 1 trials.
    assert evaluations[1] == 1 + MAX_BACKTRACKS + 1
    assert evaluations[0] > evaluations[1]


def test_lbfgs_restarts_from_steepest_descent_after_a_failed_line_search():
    """A history that leads nowhere is forgotten: the item goes on from steepest descent."""
    centre = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
    quadratic = _quadratic(centre, torch.ones(1, 3, dtype=torch.float64))
    points = []

    def objective(variable, items):
        points.append(variable.clone())
        loss, grad = quadratic(variable, items)
        if 3 <= len(points) <= 3 + MAX_BACKTRACKS:  # iteration 2's whole line search: no decrease
            loss = loss + 100.0
        return loss, grad

    result, _ = minimise_lbfgs(objective, torch.zeros(1, 3, dtype=torch.float64), 20)
    torch.testing.assert_close(result, centre)
    # Iteration 3 starts again from where iteration 1 left it, with a steepest-descent step
    # scaled to unit L1 length (as the first iteration), not with the forgotten pair's step.
    after_first = points[1]
    gradient = after_first - centre
    expected = after_first - gradient / gradient.abs().sum().clamp(min=1.0)
    torch.testing.assert_close(points[3 + MAX_BACKTRACKS], expected)


def test_momentum_descent_respects_its_bounds_and_moves_downhill():
    centres = torch.tensor([[2.0, -3.0, 0.5]])
    objective = _quadratic(centres, torch.ones(1, 3))
    losses = []
    final, _ = minimise_momentum(objective, torch.zeros(1, 3), 200, lr=(0.1, 1e-4), momentum=0.9,
                                 clamp=(0.0, 1.0), on_iteration=lambda i, x, loss: losses.append(float(loss)))
    torch.testing.assert_close(final, torch.tensor([[1.0, 0.0, 0.5]]), atol=0.05, rtol=0)
    assert losses[-1] < losses[0]


def test_momentum_steps_follow_icnn_formula():
    """d = 0.9 d + g/mean|g|; x -= lr_t d with lr_t = lr0 + t (lr1 - lr0) / n (icnn, torch SGD)."""
    gradients = [torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[-1.0, 1.0, 4.0]]), torch.tensor([[2.0, 2.0, -2.0]])]
    calls = iter(gradients)

    def objective(variable, items):
        return torch.zeros(1), next(calls)

    n_iter, lr0, lr1 = 3, 2.0, 0.5
    final, _ = minimise_momentum(objective, torch.zeros(1, 3, dtype=torch.float32), n_iter, lr=(lr0, lr1),
                                 momentum=0.9)
    direction, expected, steps = torch.zeros(1, 3), torch.zeros(1, 3), []
    for t, grad in enumerate(gradients):
        direction = 0.9 * direction + grad / grad.abs().mean()
        rate = lr0 + t * (lr1 - lr0) / n_iter
        steps.append(rate)
        expected = expected - rate * direction
    torch.testing.assert_close(final, expected)
    assert steps == [2.0, 1.5, 1.0]
    # The other form (v = 0.9 v + lr g; x -= v) gives another point: the test can tell them apart.
    velocity, other = torch.zeros(1, 3), torch.zeros(1, 3)
    for rate, grad in zip(steps, gradients):
        velocity = 0.9 * velocity + rate * grad / grad.abs().mean()
        other = other - velocity
    assert not torch.allclose(final, other)


def test_gaussian_blur_keeps_the_mean_and_smooths():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(images, 2.0)
    # Reflected edges weigh border pixels a little differently; the mean stays within 0.5%.
    torch.testing.assert_close(blurred.mean(), images.mean(), atol=2.5e-3, rtol=0)
    assert blurred.std() < 0.5 * images.std()
    assert gaussian_blur(images, 0) is images


def test_batch_mates_do_not_change_an_items_reconstruction(random_lite0, small_problem):
    _, targets = small_problem
    together = reconstruct(random_lite0, targets, SMALL, n_iter=10, progress=False, batch_size=3)
    one_by_one = reconstruct(random_lite0, targets, SMALL, n_iter=10, progress=False, batch_size=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-4)


def test_cudnn_tunes_the_batch_shape_only(random_lite0, small_problem, monkeypatch):
    """On a GPU cuDNN times its algorithms for each new shape: the whole batch's shape is worth
    it, the any-sized subsets a line search re-evaluates are not."""
    images, targets = small_problem
    problem = _Problem(random_lite0, {name: torch.from_numpy(value) for name, value in targets.items()},
                       mixed_precision=False)
    variable = torch.logit(torch.from_numpy(images).permute(0, 3, 1, 2) * 0.9 + 0.05)
    tuning = []
    features = random_lite0.features

    def recording_features(pixels, layers=None):
        tuning.append((len(pixels), torch.backends.cudnn.benchmark))
        return features(pixels, layers)

    monkeypatch.setattr(random_lite0, "features", recording_features)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    problem.device = torch.device("cuda")  # the GPU's path (a CPU evaluates each item alone)
    evaluate = problem.objective(torch.sigmoid)
    evaluate(variable, torch.arange(3))
    evaluate(variable[[2]], torch.tensor([2]))
    assert tuning == [(3, True), (1, False)]
    assert torch.backends.cudnn.benchmark


def test_the_cpu_evaluates_each_item_alone(random_lite0, small_problem, monkeypatch):
    """On the CPU every item goes through the encoder on its own (bidsrecon.parallel): its loss
    and gradient are the same bits whatever its batch-mates and the number of threads."""
    images, targets = small_problem
    problem = _Problem(random_lite0, {name: torch.from_numpy(value) for name, value in targets.items()},
                       mixed_precision=False)
    variable = torch.logit(torch.from_numpy(images).permute(0, 3, 1, 2) * 0.9 + 0.05)
    sizes = []
    features = random_lite0.features

    def recording_features(pixels, layers=None):
        sizes.append(len(pixels))
        return features(pixels, layers)

    monkeypatch.setattr(random_lite0, "features", recording_features)
    evaluate = problem.objective(torch.sigmoid)
    with task_threads(1):
        loss, grad = evaluate(variable, torch.arange(3))
        assert sizes == [1, 1, 1]
        alone_loss, alone_grad = evaluate(variable[[2]], torch.tensor([2]))
    assert torch.equal(alone_loss, loss[2:]) and torch.equal(alone_grad, grad[2:])
    with task_threads(3):
        threaded_loss, threaded_grad = evaluate(variable, torch.arange(3))
    assert torch.equal(threaded_loss, loss) and torch.equal(threaded_grad, grad)


@pytest.mark.parametrize("optimiser", ["gd", "generator"])
def test_descent_optimisers_reduce_the_loss(random_lite0, small_problem, optimiser):
    images, targets = small_problem
    options = ({"settings": PixelDescentSettings(n_iter=30, jitter=4)} if optimiser == "gd" else
               {"settings": GeneratorDescentSettings(n_iter=30, latent_max=np.full(4096, 5.0)),
                "generator": random_generator(seed=2)})
    first = reconstruct(random_lite0, targets, SMALL, optimiser=optimiser, progress=False, **options)
    again = reconstruct(random_lite0, targets, SMALL, optimiser=optimiser, progress=False, **options)
    np.testing.assert_array_equal(first, again)
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    if optimiser == "gd":
        start = np.broadcast_to(np.float32(random_lite0.mean_rgb), images.shape).copy()
    else:
        start = reconstruct(random_lite0, targets, SMALL, optimiser=optimiser, progress=False,
                            settings=GeneratorDescentSettings(n_iter=1, lr_start=0.0),
                            generator=options["generator"])
    assert _loss(random_lite0, first, targets) < 0.8 * _loss(random_lite0, start, targets)


def test_generator_optimiser_needs_a_generator(random_lite0, small_problem):
    _, targets = small_problem
    with pytest.raises(ValueError, match="needs a generator"):
        reconstruct(random_lite0, targets, SMALL, optimiser="generator", progress=False)
    with pytest.raises(ValueError, match="Unknown optimiser 'adam'"):
        reconstruct(random_lite0, targets, SMALL, optimiser="adam", progress=False)


def test_snapshots_arrive_every_n_iterations(random_lite0, small_problem):
    _, targets = small_problem
    seen = []
    final = reconstruct(random_lite0, targets, SMALL, n_iter=6, progress=False, batch_size=2,
                        snapshot_every=3,
                        on_snapshot=lambda iteration, items, images: seen.append(
                            (iteration, list(items), images)))
    assert [(iteration, items) for iteration, items, _ in seen] == [
        (3, [0, 1]), (6, [0, 1]), (3, [2]), (6, [2])]
    np.testing.assert_array_equal(seen[1][2], final[:2])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_a_clear_error(random_lite0, small_problem):
    with pytest.raises(BidsReconError, match="--device cuda"):
        resolve_device("cuda")
    _, targets = small_problem
    with pytest.raises(BidsReconError, match="Mixed precision runs on CUDA only"):
        reconstruct(random_lite0, targets, SMALL, n_iter=1, progress=False, mixed_precision=True)
    assert resolve_device("auto").type in ("cpu", "mps")


def test_zero_layer_warning_names_the_item_in_the_whole_set(random_lite0, small_problem):
    _, targets = small_problem
    targets = {name: value.copy() for name, value in targets.items()}
    targets["block2"][2] = 0
    with pytest.warns(UserWarning, match=r"'block2'.*\[2\]"):
        images = reconstruct(random_lite0, targets, SMALL, n_iter=2, progress=False, batch_size=2)
    assert np.isfinite(images).all()
