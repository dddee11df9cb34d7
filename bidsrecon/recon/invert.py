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

The optimisers' settings are :mod:`bidsrecon.recon.settings`'s, the loss of a batch and its
gradient :mod:`bidsrecon.recon.problem`'s, and what each optimiser varies and how it becomes an
image :mod:`bidsrecon.recon.renderers`'.
"""
import dataclasses
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from bidsrecon.decoding.pixels import PIXEL_LAYER
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.parallel import task_threads, task_workers
from bidsrecon.recon.allocator import freed_memory_kept
from bidsrecon.recon.problem import _cudnn_tuning, _Problem
from bidsrecon.recon.renderers import _RENDERERS
from bidsrecon.recon.settings import SETTINGS

#: Items per batch when the caller does not say. Memory grows with it: a forward and backward
#: pass through all 19 VGG19 layers at 224 px takes ~270 MB per item (measured on CPU), plus
#: the gradient offsets (one set of features, ~60 MB per item) and the L-BFGS history (20
#: image-sized vectors per item).
DEFAULT_BATCH_SIZE = 8
#: SD of the seeded jitter added to the flat start in logit units (about 1/400 in pixel
#: values): it breaks the ties that max-pooling and clipped activations see in a flat image.
START_JITTER = 0.01
OPTIMISERS = ("lbfgs", "gd", "generator")
#: Start images of the pixel optimisers: the paper's flat mean colour, the decoded pixels, or
#: uniform noise over the pixel range (icnn's and bdpy's default initial image).
STARTS = ("flat", "pixels", "noise")
#: Decoded pixels are clipped to this range before the logit of the start (the logit of 0 or 1
#: is infinite, and a pixel pinned near them would barely move).
START_RANGE = (0.02, 0.98)


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
