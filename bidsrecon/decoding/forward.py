"""One batch of images through the encoder, as float32 features on the CPU.

:func:`_image_batch` reads and checks a batch of images; :func:`_forward` runs the encoder on
it, each image alone as one task of :mod:`bidsrecon.parallel` on the CPU, so that an image's
features are the same bits whatever its batch and the number of threads;
:func:`_cached_forward` reads what a :class:`bidsrecon.features.cache.FeatureCache` holds and
runs the encoder only for the rest, returning the new entries for :func:`_store_entries` to
write. The passes over all the images are :mod:`bidsrecon.decoding.stream`'s.
"""
import numpy as np
import torch

from bidsrecon.features.cache import image_sha256
from bidsrecon.parallel import map_tasks


def _image_batch(images, start, stop):
    """Images ``start:stop`` as a contiguous float32 array (b, H, W, 3), range-checked.

    uint8 images (0-255, four times smaller to hold) are divided by 255 here, exactly as
    :func:`bidsrecon.images.load_image` does for float32 ones.
    """
    if isinstance(images, np.ndarray):
        batch = images[start:stop]
    else:
        batch = np.stack([np.asarray(images[index]) for index in range(start, stop)])
    if batch.dtype == np.uint8:
        batch = batch.astype(np.float32) / 255.0
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError("images must be RGB arrays of shape (n, H, W, 3) (or a sequence of "
                         f"(H, W, 3)); got a batch of shape {batch.shape}.")
    low, high = batch.min(), batch.max()
    if not (low >= 0 and high <= 1):  # also catches NaN
        raise ValueError("images must hold finite values in [0, 1]; images "
                         f"{start}-{stop - 1} range from {low:g} to {high:g}.")
    return batch


def _forward(encoder, batch, layers):
    """The encoder's features of a batch (b, H, W, 3) at ``layers``, as float32 arrays.

    On the CPU each image goes through the encoder alone, as one task of
    :mod:`bidsrecon.parallel`: a batched convolution rounds an image's features differently
    with other batch-mates (and the cache computes only the images it lacks), and a
    multithreaded one with another thread count. An image's features are then the same bits
    whatever its batch, the cache's state and the number of threads.
    """
    if encoder.device.type != "cpu":
        return _forward_together(encoder, batch, layers)
    if hasattr(encoder, "prepare"):  # trace in this thread, before the tasks share the encoder
        encoder.prepare(layers)
    parts = map_tasks(lambda position: _forward_together(encoder, batch[position:position + 1], layers),
                      range(len(batch)))
    return {layer: np.concatenate([part[layer] for part in parts]) for layer in layers}


def _forward_together(encoder, batch, layers):
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(encoder.device)
    # no_grad wraps only the forward pass: around a caller's yield it would leak to the caller.
    with torch.no_grad():
        features = encoder.features(tensor, layers=layers)
    missing = [layer for layer in layers if layer not in features]
    if missing:
        raise ValueError(f"The encoder returned no features for layers {missing}.")
    return {layer: features[layer].detach().to("cpu", torch.float32).numpy() for layer in layers}


def _cached_forward(encoder, batch, layers, cache):
    """:func:`_forward` that reads what ``cache`` holds and runs the encoder only for the rest.

    The encoder runs on the images that miss any layer, for the layers some image misses (a
    feature extractor asked for early layers only stops there).

    Returns
    -------
    features : dict of str to ndarray, float32
        As stored where the cache keeps the layer.
    new_entries : list of tuple
        ``(image_hash, image_shape, layer, stored features)`` to write.
    """
    hashes = [image_sha256(image) for image in batch]
    image_shape = batch.shape[1:]
    found = {layer: [cache.load(image_hash, image_shape, layer) if cache.holds(layer) else None
                     for image_hash in hashes]
             for layer in layers}
    to_compute = [layer for layer in layers if any(entry is None for entry in found[layer])]
    new_entries = []
    if to_compute:
        rows = [row for row in range(len(batch))
                if any(found[layer][row] is None for layer in to_compute)]
        computed = _forward(encoder, batch[rows], to_compute)
        for layer in to_compute:
            for position, row in enumerate(rows):
                if found[layer][row] is not None:
                    continue
                features = computed[layer][position]
                if cache.holds(layer):
                    stored = cache.as_stored(features)
                    new_entries.append((hashes[row], image_shape, layer, stored))
                    features = stored.astype(np.float32)
                found[layer][row] = features
    return {layer: np.stack(found[layer]) for layer in layers}, new_entries


def _store_entries(cache, entries):
    for image_hash, image_shape, layer, stored in entries:
        cache.store(image_hash, image_shape, layer, stored)
