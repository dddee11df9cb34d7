"""Feature inversion without an image prior: the paper's L-BFGS over pixels (Shen et al. 2019).

For each item, find the image x that minimises Σ_l w_l ‖φ_l(x) − f̂_l‖² over the layers l of
the targets (:mod:`bidsrecon.recon.loss`). The pixels are parameterised as x = sigmoid(z), which
keeps them in the valid range the way the paper's bounded L-BFGS-B does, and z starts from a flat
image of ImageNet's mean colour. Several items are optimised together: their losses are summed,
so one L-BFGS run (one curvature history, one line search) serves the whole batch.
"""
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from bidsrecon.recon.loss import feature_loss, layer_weights

#: Items per batch when the caller does not say. Memory grows with it: a forward and backward
#: pass through all 19 VGG19 layers at 224 px takes ~270 MB per item (measured on CPU).
DEFAULT_BATCH_SIZE = 8
#: L-BFGS memory (scipy's L-BFGS-B default); each pair stores two image-sized vectors.
HISTORY_SIZE = 10
#: Cap on loss evaluations per iteration: the strong-Wolfe line search usually needs 1-2.
MAX_EVALS_PER_ITERATION = 5
#: SD of the seeded jitter added to the flat start in logit units (about 1/400 in pixel
#: values): it breaks the ties that max-pooling and clipped activations see in a flat image.
START_JITTER = 0.01


def reconstruct(encoder, targets, image_size, n_iter=200, seed=0, progress=True,
                batch_size=None):
    """Optimise images whose features match ``targets``.

    Parameters
    ----------
    encoder : bidsrecon.encoders.Encoder
    targets : dict of str to ndarray, each of shape (n_items, ...)
        Target features (decoded, or true ones for a check) by layer name; the layers used are
        the keys. Each layer's item shape must be the encoder's at ``image_size``.
    image_size : int
        Side of the square images, in pixels (at least 32).
    n_iter : int, default=200
        L-BFGS iterations per batch (the paper's 200).
    seed : int, default=0
        Seed of the start's jitter; a fixed seed gives the same images on CPU.
    progress : bool, default=True
        Show a progress bar with the current loss on stderr.
    batch_size : int, optional
        Items optimised together; 8 when omitted. Items of one batch share the L-BFGS line
        search, so an item's result depends slightly on its batch-mates.

    Returns
    -------
    ndarray, shape (n_items, image_size, image_size, 3), float32 in [0, 1]
    """
    layers = encoder.check_layers(targets)
    n_items = _check_targets(encoder, targets, layers, image_size)
    _check_positive_int(n_iter, "n_iter")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    _check_positive_int(batch_size, "batch_size")
    targets = {name: torch.as_tensor(np.asarray(targets[name]), dtype=torch.float32)
               for name in layers}
    weights = layer_weights(targets)
    start = flat_start(encoder.mean_rgb, n_items, image_size, seed)

    images = np.empty((n_items, image_size, image_size, 3), dtype=np.float32)
    batches = [slice(first, first + batch_size) for first in range(0, n_items, batch_size)]
    with tqdm(total=len(batches) * n_iter, desc="reconstruct", unit="iter", file=sys.stderr,
              disable=not progress) as bar:
        for batch in batches:
            batch_images = invert_batch(
                encoder, {name: values[batch] for name, values in targets.items()},
                {name: values[batch] for name, values in weights.items()},
                start[batch], n_iter, bar)
            images[batch] = batch_images.permute(0, 2, 3, 1).cpu().numpy()
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


def invert_batch(encoder, targets, weights, start_logits, n_iter, bar):
    """Run L-BFGS on one batch; return its images, (B, 3, H, W) in [0, 1].

    Tolerances are zero: the loss is normalised per item, so its gradient per pixel is tiny,
    and torch's default ``tolerance_grad`` (1e-7) can stop L-BFGS at iteration 0 (a known
    failure: the start image comes back). Iterations stop at ``n_iter``, at a step of exactly
    zero, or when a direction is not a descent direction.
    """
    device = encoder.device
    targets = {name: values.to(device) for name, values in targets.items()}
    weights = {name: values.to(device) for name, values in weights.items()}
    logits = start_logits.to(device).requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [logits], lr=1.0, max_iter=n_iter, max_eval=MAX_EVALS_PER_ITERATION * n_iter,
        tolerance_grad=0.0, tolerance_change=0.0, history_size=HISTORY_SIZE,
        line_search_fn="strong_wolfe")
    first_count = bar.n

    def closure():
        optimizer.zero_grad()
        features = encoder.features(torch.sigmoid(logits), list(targets))
        loss = feature_loss(features, targets, weights).sum()
        loss.backward()
        # L-BFGS counts its iterations in its state; the bar follows them, not evaluations.
        bar.update(first_count + optimizer.state[logits].get("n_iter", 0) - bar.n)
        bar.set_postfix(loss=f"{loss.item() / len(logits):.4g}", refresh=False)
        return loss

    optimizer.step(closure)
    bar.update(first_count + n_iter - bar.n)
    return torch.sigmoid(logits.detach())


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
