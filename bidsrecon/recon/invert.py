"""Feature inversion: find images whose encoder features match the targets (Shen et al. 2019).

For each item, minimise Σ_l w_l ‖φ_l(x) − f̂_l‖² over the layers l of the targets
(:mod:`bidsrecon.recon.loss`) with one of three optimisers, each with the paper's defaults:

``lbfgs``
    L-BFGS over pixels, no image prior (the paper's default; Figs 3A, 4, 6-8): 200 iterations
    from a flat image of ImageNet's mean colour. Pixels are x = sigmoid(z), which keeps them in
    the valid range the way the paper's bounded L-BFGS-B does. With ``scale`` > 1 the optimised
    image is that many times smaller and upsampled (bilinear) before the encoder: detail finer
    than it cannot be made up from noisy features.
``gd``
    Normalised-gradient descent with momentum over pixels (the lab's icnn defaults): learning
    rate 2 → 1e-10, momentum 0.9, pixel decay towards the mean colour 0.2 → 1e-10, Gaussian blur
    σ 2 → 0.5 px (at 224 px; scaled with the image size), optional jitter.
``generator``
    The same descent over the 4,096-d latent of a DGN generator (the paper's Fig 2 prior): start
    at zero, latent decay 0.01 per iteration, latent clipped to [0, upper bound].

With a decoded pixel image (the ``pixels`` pseudo-layer, :mod:`bidsrecon.decoding.pixels`), the
image starts from it (upsampled) instead of the flat image, and its area-averaged copy is held to
it by one more term of the loss, weighted as one more layer (``λ ‖pool(x) − p̂‖²`` over the pixels'
contrast energy ``‖p̂ − mean(p̂)‖²``, where a layer has ``‖f̂_l‖²``; :func:`pixel_weights`), so
λ = 1 counts the pixels' relative error as much as one layer's; a total-variation term
(``tv_weight``, in the same units) can be added. The deep layers alone leave the layout free
(shapes and letters came out as coloured textures); the pixel term keeps what a linear decoder
sees and lets the features add detail.

A batch of items is optimised together but independently: every optimiser keeps its state per
item, so an item's result does not depend on its batch-mates. On the CPU each item goes through
the encoder alone, on one thread (:mod:`bidsrecon.parallel`), so the images are the same bits
whatever the batch size and the number of threads; on a GPU the batch goes through together and
its convolutions round an item differently with other batch-mates.
"""
import contextlib
import dataclasses
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from bidsrecon.decoding.pixels import PIXEL_LAYER
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.parallel import map_tasks, task_threads, task_workers
from bidsrecon.recon.allocator import freed_memory_kept
from bidsrecon.recon.descent import gaussian_blur, linear_schedule, minimise_momentum
from bidsrecon.recon.generator import LATENT_SIZE
from bidsrecon.recon.lbfgs import minimise_lbfgs
from bidsrecon.recon.loss import (
    feature_loss_and_output_gradients,
    gradient_offsets,
    layer_weights,
    pixel_weights,
    total_variation,
)

#: Items per batch when the caller does not say. Memory grows with it: a forward and backward
#: pass through all 19 VGG19 layers at 224 px takes ~270 MB per item (measured on CPU), plus
#: the gradient offsets (one set of features, ~60 MB per item) and the L-BFGS history (20
#: image-sized vectors per item).
DEFAULT_BATCH_SIZE = 8
#: SD of the seeded jitter added to the flat start in logit units (about 1/400 in pixel
#: values): it breaks the ties that max-pooling and clipped activations see in a flat image.
START_JITTER = 0.01
#: Image size at which the blur and jitter settings are given in pixels (the paper's 224).
REFERENCE_SIZE = 224
OPTIMISERS = ("lbfgs", "gd", "generator")
#: Start images of the pixel optimisers: the paper's flat mean colour, the decoded pixels, or
#: uniform noise over the pixel range (icnn's and bdpy's default initial image).
STARTS = ("flat", "pixels", "noise")
#: Decoded pixels are clipped to this range before the logit of the start (the logit of 0 or 1
#: is infinite, and a pixel pinned near them would barely move).
START_RANGE = (0.02, 0.98)


@dataclasses.dataclass(frozen=True)
class LbfgsSettings:
    """L-BFGS over pixels; the paper's defaults (see :mod:`bidsrecon.recon.lbfgs`)."""

    n_iter: int = 200
    #: The optimised image has image_size / scale pixels a side and is upsampled (bilinear) to
    #: image_size before the encoder: 1 optimises every pixel (the paper's).
    scale: int = 1


@dataclasses.dataclass(frozen=True)
class PixelDescentSettings:
    """Momentum descent over pixels; the lab's icnn defaults. Rates in 0-255 pixel units."""

    n_iter: int = 200
    lr_start: float = 2.0
    lr_end: float = 1e-10
    momentum: float = 0.9
    decay_start: float = 0.2
    decay_end: float = 1e-10
    blur_start: float = 2.0
    blur_end: float = 0.5
    jitter: int = 0
    #: Keep pixels in [0, 1] after each step (the lab's icnn does not clamp; the image saved is
    #: clipped either way).
    clamp: bool = True


@dataclasses.dataclass(frozen=True)
class GeneratorDescentSettings:
    """Momentum descent over a DGN generator's latent; the paper's defaults (Fig 2).

    ``latent_max`` is the upper bound of the latent: a number, a sequence of 4,096 (the lab
    uses 3 SD of AlexNet's fc7 activations per unit), or None for no upper bound.
    """

    n_iter: int = 200
    lr_start: float = 2.0
    lr_end: float = 1e-10
    momentum: float = 0.9
    latent_decay: float = 0.01
    latent_min: float = 0.0
    latent_max: object = None


SETTINGS = {"lbfgs": LbfgsSettings, "gd": PixelDescentSettings, "generator": GeneratorDescentSettings}


def describe_settings(optimiser, settings):
    """The optimiser and its settings as plain JSON-ready data, for sidecars."""
    values = dataclasses.asdict(settings)
    if values.get("latent_max") is not None and np.ndim(values["latent_max"]):
        values["latent_max"] = f"{np.size(values['latent_max'])} per-unit values"
    return {"optimiser": optimiser, **values}


def reconstruct(encoder, targets, image_size, *, optimiser="lbfgs", settings=None,
                generator=None, seed=0, progress=True, batch_size=None, mixed_precision=False,
                snapshot_every=0, on_snapshot=None, n_iter=None, pixel_target=None, pixel_weight=0.0,
                start=None, tv_weight=0.0):
    """Optimise images whose features match ``targets``.

    Parameters
    ----------
    encoder : bidsrecon.encoders.Encoder
        Its device is where the work happens.
    targets : dict of str to ndarray, each of shape (n_items, ...)
        Target features (decoded, or true ones for a check) by layer name; the layers used are
        the keys. Each layer's item shape must be the encoder's at ``image_size``.
    image_size : int
        Side of the square images, in pixels (at least 32).
    optimiser : {"lbfgs", "gd", "generator"}, default="lbfgs"
    settings : LbfgsSettings, PixelDescentSettings or GeneratorDescentSettings, optional
        The optimiser's settings; the paper's defaults when omitted.
    generator : bidsrecon.recon.generator.Generator, optional
        Required by (and only by) the ``generator`` optimiser.
    seed : int, default=0
        Seed of the start's jitter and of the image jitter; a fixed seed gives the same images
        on CPU.
    progress : bool, default=True
        Show a progress bar with the current mean loss on stderr.
    batch_size : int, optional
        Items optimised together (8 when omitted); the results do not depend on it. On the CPU,
        where the items of a batch go through the network in parallel, one per thread, a batch
        holds at least as many items as there are threads (``torch.get_num_threads()``), so
        that every thread has one; the network's memory grows with the threads, not the batch.
    mixed_precision : bool, default=False
        Run the networks in bfloat16 autocast (CUDA only); the loss stays float32.
    snapshot_every : int, default=0
        Call ``on_snapshot`` every this many iterations (0: never).
    on_snapshot : callable, optional
        ``on_snapshot(iteration, item_indices, images)`` with images as from this function.
    n_iter : int, optional
        Shortcut that replaces ``settings.n_iter``.
    pixel_target : ndarray, shape (n_items, 3, s, s), optional
        Decoded small images (RGB in [0, 1], ``s`` at most ``image_size``): the start image
        (``start="pixels"``) and the target of the pixel term.
    pixel_weight : float, default=0.0
        λ of the pixel term, relative to one layer (see the module's notes); 0 leaves the pixels
        out of the loss.
    tv_weight : float, default=0.0
        Weight of a total-variation term (squared differences of neighbouring pixels of the
        image), in the pixel term's units; needs a ``pixel_target``. 0: none.
    start : {"flat", "pixels", "noise"}, optional
        Start image of ``lbfgs`` and ``gd``: "pixels" (the default with a ``pixel_target``), the
        paper's flat image of the encoder's mean colour (the default without), or seeded uniform
        noise (icnn's default).

    Returns
    -------
    ndarray, shape (n_items, image_size, image_size, 3), float32 in [0, 1]
    """
    if optimiser not in OPTIMISERS:
        raise ValueError(f"Unknown optimiser {optimiser!r}; choose one of {', '.join(OPTIMISERS)}.")
    settings = SETTINGS[optimiser]() if settings is None else settings
    if not isinstance(settings, SETTINGS[optimiser]):
        raise TypeError(f"Optimiser {optimiser!r} takes {SETTINGS[optimiser].__name__}, "
                        f"got {type(settings).__name__}.")
    if n_iter is not None:
        settings = dataclasses.replace(settings, n_iter=n_iter)
    _check_positive_int(settings.n_iter, "n_iter")
    if optimiser == "lbfgs":
        _check_positive_int(settings.scale, "scale")
        if image_size // settings.scale < 8:
            raise ValueError(f"scale {settings.scale} leaves fewer than 8 pixels of a {image_size}-px image to optimise.")
    if (optimiser == "generator") != (generator is not None):
        raise ValueError("The 'generator' optimiser needs a generator, and only it takes one.")
    if mixed_precision and encoder.device.type != "cuda":
        raise BidsReconError("Mixed precision runs on CUDA only; drop --mixed-precision or "
                             "use --device cuda.", EXIT_BAD_ARGUMENTS)
    layers = encoder.check_layers(targets)
    n_items = _check_targets(encoder, targets, layers, image_size)
    start, pixel_target = _check_image_terms(start, pixel_target, pixel_weight, tv_weight, n_items, image_size)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    _check_positive_int(batch_size, "batch_size")
    if snapshot_every:
        _check_positive_int(snapshot_every, "snapshot_every")
    targets = {name: torch.as_tensor(np.asarray(targets[name]), dtype=torch.float32)
               for name in layers}
    if pixel_weight or tv_weight:
        targets[PIXEL_LAYER] = torch.as_tensor(pixel_target)
    # cuDNN picks the fastest convolution algorithms for the batch's fixed shapes (a GPU run is
    # reproducible up to rounding only; the CPU's is exact, whatever the number of threads:
    # task_threads evaluates each item on one thread, the items in parallel).
    with _cudnn_tuning(encoder.device.type == "cuda" or torch.backends.cudnn.benchmark), freed_memory_kept(), \
            task_threads():
        if encoder.device.type == "cpu":
            batch_size = max(batch_size, task_workers())
        return _reconstruct_batches(encoder, targets, image_size, optimiser, settings, generator,
                                    seed, progress, batch_size, mixed_precision, snapshot_every,
                                    on_snapshot, (pixel_weight, tv_weight),
                                    _start(start, encoder, pixel_target, n_items, image_size, seed))


def _check_image_terms(start, pixel_target, pixel_weight, tv_weight, n_items, image_size):
    """The start image's kind and the checked pixel target (see `reconstruct`)."""
    start = ("pixels" if pixel_target is not None else "flat") if start is None else start
    if start not in STARTS:
        raise ValueError(f"Unknown start {start!r}; choose one of {', '.join(STARTS)}.")
    if pixel_target is None and (start == "pixels" or pixel_weight or tv_weight):
        raise ValueError("start='pixels', a pixel_weight and a tv_weight need a pixel_target.")
    if pixel_target is not None:
        pixel_target = _check_pixel_target(pixel_target, n_items, image_size)
    for name, weight in (("pixel_weight", pixel_weight), ("tv_weight", tv_weight)):
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"Expected {name} as a number >= 0, got {weight!r}.")
    return start, pixel_target


def _reconstruct_batches(encoder, targets, image_size, optimiser, settings, generator, seed,
                         progress, batch_size, mixed_precision, snapshot_every, on_snapshot,
                         image_term_weights, start):
    """The heavy loop of :func:`reconstruct`, over batches of items; arguments checked there.

    ``image_term_weights`` are the pixel and total-variation weights; ``start`` holds every
    item's start logits, drawn for all items at once so that an item's start does not depend on
    its batch.
    """
    n_items = len(next(iter(targets.values())))
    images = np.empty((n_items, image_size, image_size, 3), dtype=np.float32)
    # Slices, not index arrays: a batch of the targets is a view, not a copy.
    batches = [slice(first, min(first + batch_size, n_items))
               for first in range(0, n_items, batch_size)]
    with tqdm(total=len(batches) * settings.n_iter, desc=f"reconstruct ({optimiser})",
              unit="iter", file=sys.stderr, disable=not progress) as bar:
        for batch in batches:
            problem = _Problem(encoder, {name: value[batch] for name, value in targets.items()},
                               mixed_precision, batch.start, *image_term_weights)
            render = _RENDERERS[optimiser](problem, image_size, settings, generator)

            def on_iteration(iteration, variable, loss, batch=batch):
                bar.update(1)
                if not bar.disable:  # .item() waits for a GPU: only for a bar that is shown
                    bar.set_postfix(loss=f"{loss.mean().item():.4g}", refresh=False)
                if snapshot_every and on_snapshot is not None and iteration % snapshot_every == 0:
                    on_snapshot(iteration, np.arange(n_items)[batch], render.images(variable))

            variable = render.optimise(start[batch], seed, on_iteration)
            images[batch] = render.images(variable)
    return images


class _Problem:
    """The loss of one batch, and its gradient with respect to the images' parameters."""

    def __init__(self, encoder, targets, mixed_precision, first_item=0, pixel_weight=0.0, tv_weight=0.0):
        self.encoder = encoder
        self.device = encoder.device
        targets = {name: value.to(self.device) for name, value in targets.items()}
        pixels = targets.pop(PIXEL_LAYER, None)
        # Per item, so computing them batch by batch (on the device) changes nothing.
        weights = layer_weights(targets, first_item)
        self.pixel_size, self.tv_weights = None, None
        if pixels is not None:
            self.tv_weights = pixel_weights(pixels, tv_weight, targets).to(self.device) if tv_weight else None
            weights[PIXEL_LAYER] = pixel_weights(pixels, pixel_weight, targets)
            targets[PIXEL_LAYER] = pixels
            self.pixel_size = pixels.shape[-1]
        self.weights = {name: value.to(self.device) for name, value in weights.items()}
        # Held instead of the targets (on a GPU in place of their copy; on the CPU, where the
        # targets are views of the caller's, one batch of features more): the loss gradient
        # is then one pass over the features.
        self.offsets = gradient_offsets(targets, self.weights)
        self.n_items = len(next(iter(targets.values())))
        self.mixed_precision = mixed_precision

    def objective(self, render):
        """``objective(variable, items)`` → (loss per item, gradient), images = render(variable).

        On the CPU each item is evaluated alone, as one task of :mod:`bidsrecon.parallel` (one
        thread each, the items in parallel): its loss and gradient then depend neither on the
        number of threads (oneDNN's backward pass splits its sums by it) nor on its batch-mates.
        A GPU evaluates the items together.
        """
        layers = [name for name in self.offsets if name != PIXEL_LAYER]
        outputs = list(self.offsets)
        if hasattr(self.encoder, "prepare"):  # trace in this thread, before the tasks share it
            self.encoder.prepare(layers)

        def evaluate_together(variable, items):
            offsets, weights = self.offsets, self.weights
            whole_batch = len(items) == self.n_items
            if len(items) == 1 and not whole_batch:  # views, not copies, of one item's offsets
                item = int(items[0])
                offsets = {name: value[item:item + 1] for name, value in offsets.items()}
                weights = {name: value[item:item + 1] for name, value in weights.items()}
            elif not whole_batch:  # a line search re-evaluating some items only
                offsets = {name: value[items] for name, value in offsets.items()}
                weights = {name: value[items] for name, value in weights.items()}
            variable = variable.detach().requires_grad_(True)
            # cuDNN times every algorithm on each new input shape (seconds for VGG19 in bfloat16),
            # and a line search re-evaluates any number of items: only the batch's shape is tuned.
            # (Not on the CPU, whose tasks would set that global flag from several threads.)
            tuning = (contextlib.nullcontext() if self.device.type == "cpu"
                      else _cudnn_tuning(torch.backends.cudnn.benchmark and whole_batch))
            with tuning, torch.enable_grad():
                image = render(variable)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.mixed_precision):
                    features = self.encoder.features(image, layers)
                features = {name: value.float() for name, value in features.items()}
                if self.pixel_size:
                    features[PIXEL_LAYER] = torch.nn.functional.adaptive_avg_pool2d(image.float(), self.pixel_size)
                loss, output_gradients = feature_loss_and_output_gradients(features, offsets, weights)
                extra_outputs, extra_gradients = [], []
                if self.tv_weights is not None:
                    tv_weights = self.tv_weights if whole_batch else self.tv_weights[items]
                    variation = total_variation(image.float())
                    loss = loss + tv_weights * variation.detach()
                    extra_outputs, extra_gradients = [variation], [tv_weights]
                (grad,) = torch.autograd.grad([features[name] for name in outputs] + extra_outputs, variable,
                                              grad_outputs=[output_gradients[name] for name in outputs]
                                              + extra_gradients)
            return loss, grad

        if self.device.type != "cpu":
            return evaluate_together

        def evaluate(variable, items):
            results = map_tasks(lambda position: evaluate_together(variable[position:position + 1],
                                                                   items[position:position + 1]),
                                range(len(items)))
            return torch.cat([loss for loss, _ in results]), torch.cat([grad for _, grad in results])

        return evaluate


class _PixelLbfgs:
    """L-BFGS over the logits of the pixels."""

    def __init__(self, problem, image_size, settings, generator):
        self.problem, self.image_size, self.settings = problem, image_size, settings

    def render(self, logits):
        pixels = torch.sigmoid(logits)
        if self.settings.scale == 1:
            return pixels
        return torch.nn.functional.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                               align_corners=False)

    def optimise(self, start_logits, seed, on_iteration):
        start = start_logits.to(self.problem.device)
        if self.settings.scale > 1:
            start = torch.logit(torch.nn.functional.adaptive_avg_pool2d(
                torch.sigmoid(start), self.image_size // self.settings.scale))
        variable, _ = minimise_lbfgs(self.problem.objective(self.render), start, self.settings.n_iter,
                                     on_iteration)
        return variable

    def images(self, variable):
        with torch.no_grad():
            return _to_numpy(self.render(variable))


class _PixelDescent:
    """Momentum descent over pixels in [0, 1], with decay towards the mean colour and blur."""

    def __init__(self, problem, image_size, settings, generator):
        self.problem, self.image_size, self.settings = problem, image_size, settings
        self.mean = torch.tensor(problem.encoder.mean_rgb, device=problem.device).view(1, 3, 1, 1)
        self.scale = image_size / REFERENCE_SIZE

    def optimise(self, start_logits, seed, on_iteration):
        s = self.settings
        start = torch.sigmoid(start_logits).to(self.problem.device)

        def shrink(pixels, iteration):
            decay = linear_schedule(s.decay_start, s.decay_end, iteration, s.n_iter)
            return self.mean + (1 - decay) * (pixels - self.mean)

        def smooth(pixels, iteration):
            return gaussian_blur(pixels, self.scale * linear_schedule(
                s.blur_start, s.blur_end, iteration, s.n_iter))

        variable, _ = minimise_momentum(
            self.problem.objective(lambda pixels: pixels), start, s.n_iter,
            lr=(s.lr_start, s.lr_end), momentum=s.momentum, step_unit=1 / 255,
            jitter=round(s.jitter * self.scale), shrink=shrink, smooth=smooth, clamp=(0.0, 1.0) if s.clamp else None,
            seed=seed, on_iteration=on_iteration)
        return variable

    def images(self, variable):
        return _to_numpy(variable.clamp(0.0, 1.0))  # unclamped descent may leave the range


class _GeneratorDescent:
    """Momentum descent over a DGN generator's latent."""

    def __init__(self, problem, image_size, settings, generator):
        self.problem, self.image_size, self.settings = problem, image_size, settings
        self.generator = generator

    def render(self, latent):
        return self.generator.render(latent, self.image_size)

    def optimise(self, start_logits, seed, on_iteration):
        """Start from a latent of zeros (the paper's); ``start_logits`` (pixels) is not used."""
        s = self.settings
        device = self.problem.device
        # torch.clamp takes two numbers or two tensors: a per-unit bound makes both tensors.
        lower, upper = s.latent_min, s.latent_max
        if upper is not None and np.ndim(upper):
            upper = torch.as_tensor(np.asarray(upper, dtype=np.float32), device=device)
            lower = torch.full_like(upper, lower)
        elif upper is not None:
            upper = float(upper)
        start = torch.zeros((self.problem.n_items, LATENT_SIZE), device=device)
        variable, _ = minimise_momentum(
            self.problem.objective(self.render), start, s.n_iter, lr=(s.lr_start, s.lr_end),
            momentum=s.momentum, shrink=lambda latent, _: (1 - s.latent_decay) * latent,
            clamp=(lower, upper), seed=seed, on_iteration=on_iteration)
        return variable

    def images(self, variable):
        with torch.no_grad():
            return _to_numpy(self.render(variable).clamp(0, 1))


_RENDERERS = {"lbfgs": _PixelLbfgs, "gd": _PixelDescent, "generator": _GeneratorDescent}


@contextlib.contextmanager
def _cudnn_tuning(enabled):
    """``torch.backends.cudnn.benchmark`` set to ``enabled`` for the block, then restored."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def flat_start(mean_rgb, n_items, image_size, seed):
    """Logits of flat images of ``mean_rgb``, with a small seeded jitter.

    Returns
    -------
    torch.Tensor, shape (n_items, 3, image_size, image_size)
    """
    generator = torch.Generator().manual_seed(seed)
    mean_logit = torch.logit(torch.tensor(mean_rgb, dtype=torch.float32)).view(1, 3, 1, 1)
    jitter = torch.randn((n_items, 3, image_size, image_size), generator=generator)
    return mean_logit + START_JITTER * jitter


def _start(kind, encoder, pixel_target, n_items, image_size, seed):
    """Start logits of every item (see :data:`STARTS`)."""
    if kind == "pixels":
        return pixel_start(pixel_target, image_size, seed)
    if kind == "noise":
        noise = torch.rand((n_items, 3, image_size, image_size), generator=torch.Generator().manual_seed(seed))
        return torch.logit(noise.clamp(*START_RANGE))
    return flat_start(encoder.mean_rgb, n_items, image_size, seed)


def pixel_start(pixels, image_size, seed):
    """Logits of decoded pixel images upsampled (bilinear) to ``image_size``, with the flat
    start's seeded jitter.

    Returns
    -------
    torch.Tensor, shape (n_items, 3, image_size, image_size)
    """
    pixels = torch.as_tensor(np.asarray(pixels), dtype=torch.float32)
    upsampled = torch.nn.functional.interpolate(pixels, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    jitter = torch.randn(upsampled.shape, generator=generator)
    return torch.logit(upsampled.clamp(*START_RANGE)) + START_JITTER * jitter


def _check_pixel_target(pixels, n_items, image_size):
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[:2] != (n_items, 3) or pixels.shape[2] != pixels.shape[3] \
            or not 1 <= pixels.shape[2] <= image_size:
        raise ValueError(f"Expected the pixel target as ({n_items}, 3, s, s) with s <= {image_size}, "
                         f"got {pixels.shape}.")
    if not np.isfinite(pixels).all():
        raise ValueError("The pixel target holds NaN or infinite values.")
    return pixels


def _to_numpy(images):
    return images.detach().float().permute(0, 2, 3, 1).cpu().numpy()


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"Expected {name} as a positive integer, got {value!r}.")


def _check_targets(encoder, targets, layers, image_size):
    """Check item counts and each layer's shape against the encoder; return the item count."""
    _check_positive_int(image_size, "image_size")
    counts = {name: len(targets[name]) for name in layers}
    if len(set(counts.values())) != 1:
        raise ValueError(f"Expected the same number of items in every layer, got {counts}.")
    probe = torch.full((1, 3, image_size, image_size), 0.5)
    with torch.no_grad():
        expected = {name: tuple(value.shape[1:])
                    for name, value in encoder.features(probe, layers).items()}
    for name in layers:
        item_shape = tuple(np.shape(targets[name])[1:])
        if item_shape != expected[name]:
            raise ValueError(f"Layer {name!r}: {encoder.name} gives features of shape "
                             f"{expected[name]} at {image_size} px, the targets have "
                             f"{item_shape}.")
    n_items = counts[layers[0]]
    if n_items == 0:
        raise ValueError("Expected at least one item to reconstruct, got none.")
    return n_items
