"""Passes of the training images through the encoder, batch by batch.

The decoder never holds a (voxels × units) weight matrix nor all training features at once:
decoding a layer is a weighted sum of the training images' features, accumulated while the
images stream through the encoder. Memory is O(n_items × units + batch × units) per layer.

Images are given as an ``ndarray (n, H, W, 3)`` of float32 in [0, 1], or as any sequence with
``len()`` whose items are ``(H, W, 3)`` arrays in [0, 1] (for example an object that loads and
resizes one stimulus file per ``__getitem__``, so the images never sit in memory together).

The encoder follows the interface of :mod:`bidsrecon.encoders`:
``encoder.features(images (B, 3, H, W) float in [0, 1], layers=list) -> dict of tensors``,
``encoder.layers`` (valid names) and ``encoder.device``.
"""
import numpy as np
import torch
from tqdm.auto import tqdm

from bidsrecon.recon.spread import spread_from_moments


def iter_feature_batches(encoder, images, layers, batch_size=16, progress=False):
    """Yield the encoder's features of consecutive batches of images.

    Parameters
    ----------
    encoder : object
        Has ``features(tensor, layers=list)``, ``layers`` and ``device``.
    images : ndarray, shape (n, H, W, 3), or sequence of ndarray (H, W, 3)
        Float values in [0, 1].
    layers : list of str
        Layers to extract, each in ``encoder.layers``.
    batch_size : int, default 16
    progress : bool, default False
        Show a progress bar.

    Yields
    ------
    start : int
        Index of the batch's first image.
    features : dict of str to ndarray, shape (b, ...) float32
        Features of each layer, on the CPU.
    """
    layers = _check_layers(encoder, layers)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    n_images = len(images)
    with tqdm(total=n_images, unit="image", desc="encoder", disable=not progress) as bar:
        for start in range(0, n_images, batch_size):
            stop = min(start + batch_size, n_images)
            batch = _image_batch(images, start, stop)
            tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(encoder.device)
            # no_grad wraps only the forward pass: around the yield it would leak to the caller.
            with torch.no_grad():
                features = encoder.features(tensor, layers=layers)
            missing = [layer for layer in layers if layer not in features]
            if missing:
                raise ValueError(f"The encoder returned no features for layers {missing}.")
            yield start, {layer: features[layer].detach().to("cpu", torch.float32).numpy()
                          for layer in layers}
            bar.update(stop - start)


def sample_unit_features(encoder, images, layers, n_units=1000, seed=0, batch_size=16):
    """Features of a random sample of each layer's units, for choosing alpha.

    Parameters
    ----------
    encoder : object
        See :func:`iter_feature_batches`.
    images : ndarray, shape (n_images, H, W, 3), or sequence of ndarray (H, W, 3)
    layers : list of str
    n_units : int, default 1000
        Units drawn per layer without replacement (all of them in a smaller layer).
    seed : int, default 0
        The draw for a layer depends on the seed and the layer's position in
        ``encoder.layers`` only, not on which other layers are requested.
    batch_size : int, default 16

    Returns
    -------
    features : dict of str to ndarray, shape (n_images, n_units) float32
    unit_indices : dict of str to ndarray of int
        Sorted indices of the sampled units in each layer's flattened (C-order) features.
    """
    if n_units < 1:
        raise ValueError(f"n_units must be a positive integer; got {n_units!r}.")
    layers = _check_layers(encoder, layers)
    features, unit_indices = {}, {}
    for start, batch in iter_feature_batches(encoder, images, layers, batch_size):
        for layer in layers:
            flat = batch[layer].reshape(len(batch[layer]), -1)
            if layer not in unit_indices:
                rng = np.random.default_rng([seed, list(encoder.layers).index(layer)])
                n_layer_units = flat.shape[1]
                unit_indices[layer] = np.sort(rng.choice(
                    n_layer_units, size=min(n_units, n_layer_units), replace=False))
                features[layer] = np.empty((len(images), len(unit_indices[layer])), np.float32)
            features[layer][start:start + len(flat)] = flat[:, unit_indices[layer]]
    return features, unit_indices


def decode_features(encoder, images, coefficients, counts, batch_size=16, progress=True):
    """Decoded features of every unit of every layer, in one pass over the training images.

    Computes ``A_u F + (1 − Σ_j A_u[:, j]) ȳ`` per layer, where ``F`` are the training images'
    features and ``ȳ = Σ_j c_j f_j / Σ_j c_j`` their trial-count-weighted mean.

    Parameters
    ----------
    encoder : object
        See :func:`iter_feature_batches`.
    images : ndarray, shape (n_images, H, W, 3), or sequence of ndarray (H, W, 3)
        The unique training images, in the order of the coefficients' columns.
    coefficients : dict of str to ndarray, shape (n_items, n_images)
        ``A_u`` per layer (:meth:`KernelRidgeDecoder.coefficients`).
    counts : array-like of int, shape (n_images,)
        Number of training trials of each image.
    batch_size : int, default 16
    progress : bool, default True

    Returns
    -------
    decoded : dict of str to ndarray, shape (n_items, *layer_shape) float32
    train_mean : dict of str to ndarray, shape layer_shape float32
        Count-weighted mean ``ȳ`` of the training features.
    train_spread : dict of str to float
        Spread of the training features around ``ȳ``
        (:func:`bidsrecon.recon.spread.spread_from_moments`, count-weighted).
    """
    counts = _check_counts(counts, len(images))
    coefficients = _check_coefficients(coefficients, len(images))
    weights = (counts / counts.sum()).astype(np.float32)
    coefficients_f32 = {layer: torch.from_numpy(layer_coefficients.astype(np.float32))
                        for layer, layer_coefficients in coefficients.items()}
    # Features are accumulated relative to a provisional centre (the first batch's mean) so that
    # float32 sums lose precision relative to the features' spread, not to their mean.
    centre, decoded, mean_offset, mean_square_offset, layer_shape = {}, {}, {}, {}, {}
    for start, batch in iter_feature_batches(encoder, images, list(coefficients), batch_size,
                                             progress):
        for layer, layer_coefficients in coefficients_f32.items():
            flat = batch[layer].reshape(len(batch[layer]), -1)
            if layer not in centre:
                layer_shape[layer] = batch[layer].shape[1:]
                centre[layer] = flat.mean(axis=0)
                decoded[layer] = np.zeros((len(layer_coefficients), flat.shape[1]), np.float32)
                mean_offset[layer] = np.zeros(flat.shape[1])
                mean_square_offset[layer] = np.zeros(flat.shape[1])
            offset = flat - centre[layer]
            stop = start + len(flat)
            # In place, through torch: no (n_items × units) temporary per batch.
            torch.from_numpy(decoded[layer]).addmm_(layer_coefficients[:, start:stop],
                                                    torch.from_numpy(offset))
            # einsum's own loop, not a BLAS call: numpy's BLAS threads alternating with torch's
            # made this loop several times slower on a 16-core machine.
            mean_offset[layer] += np.einsum("i,ij->j", weights[start:stop], offset)
            mean_square_offset[layer] += np.einsum("i,ij,ij->j", weights[start:stop], offset,
                                                   offset)

    train_mean, train_spread = {}, {}
    for layer, layer_coefficients in coefficients.items():
        shape = layer_shape[layer]
        # Moments about the centre give the same variance as raw moments, without cancellation.
        train_spread[layer] = spread_from_moments(mean_offset[layer].reshape(shape),
                                                  mean_square_offset[layer].reshape(shape))
        train_mean[layer] = (centre[layer] + mean_offset[layer]).astype(np.float32).reshape(shape)
        # A_u F + (1 − s) ȳ = A_u (F − c) + c + (1 − s)(ȳ − c), with s the coefficients' row sums.
        mean_share = (1.0 - layer_coefficients.sum(axis=1)).astype(np.float32)
        decoded_layer = torch.from_numpy(decoded[layer])
        decoded_layer += torch.from_numpy(centre[layer])
        decoded_layer.addr_(torch.from_numpy(mean_share),
                            torch.from_numpy(mean_offset[layer].astype(np.float32)))
        decoded[layer] = decoded[layer].reshape((len(layer_coefficients),) + shape)
    return decoded, train_mean, train_spread


def _image_batch(images, start, stop):
    """Images ``start:stop`` as a contiguous float32 array (b, H, W, 3), range-checked."""
    if isinstance(images, np.ndarray):
        batch = images[start:stop]
    else:
        batch = np.stack([np.asarray(images[index]) for index in range(start, stop)])
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError("images must be RGB arrays of shape (n, H, W, 3) (or a sequence of "
                         f"(H, W, 3)); got a batch of shape {batch.shape}.")
    low, high = batch.min(), batch.max()
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise ValueError("images must hold finite values in [0, 1]; images "
                         f"{start}-{stop - 1} range from {low:g} to {high:g}.")
    return batch


def _check_layers(encoder, layers):
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; name at least one of encoder.layers.")
    unknown = [layer for layer in layers if layer not in encoder.layers]
    if unknown:
        raise ValueError(f"Unknown layers {unknown}; this encoder has {list(encoder.layers)}.")
    return layers


def _check_counts(counts, n_images):
    counts = np.asarray(counts)
    if counts.shape != (n_images,) or not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"counts must be {n_images} integers (trials per training image); "
                         f"got dtype {counts.dtype} and shape {counts.shape}.")
    if np.any(counts < 0) or counts.sum() == 0:
        raise ValueError("counts must be non-negative with at least one trial in all.")
    return counts.astype(np.float64)


def _check_coefficients(coefficients, n_images):
    if not isinstance(coefficients, dict) or not coefficients:
        raise ValueError("coefficients must be a non-empty dict of layer name to an array "
                         "(n_items, n_images).")
    checked = {}
    for layer, layer_coefficients in coefficients.items():
        layer_coefficients = np.asarray(layer_coefficients, dtype=np.float64)
        if layer_coefficients.ndim != 2 or layer_coefficients.shape[1] != n_images:
            raise ValueError(f"coefficients[{layer!r}] must have shape (n_items, {n_images}) "
                             f"for {n_images} training images; got {layer_coefficients.shape}.")
        checked[layer] = layer_coefficients
    return checked
