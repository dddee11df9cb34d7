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

Each function takes an optional :class:`bidsrecon.features.cache.FeatureCache`: features it
holds are read instead of computed, and those it lacks are computed (running the encoder only on
the images and layers missing) and written, so a second pass or a second subject shown the same
stimuli reads from disk.

Each also takes an optional :class:`bidsrecon.features.files.FeatureFiles` (``--features-dir``):
the images' features are then read from its files, by image name, instead of computed; the
encoder does not run on the images and the cache is not used (``images`` then only gives their
number; the encoder still names the valid layers).

One batch's forward pass is :mod:`bidsrecon.decoding.forward`'s; the memory that decoding takes,
and the batch size and layer groups that fit a budget, :mod:`bidsrecon.decoding.memory`'s.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from bidsrecon.decoding.forward import _cached_forward, _forward, _image_batch, _store_entries
from bidsrecon.decoding.memory import ACCUMULATED_BATCHES, plan_decoding
from bidsrecon.features.spread import channel_sd, spread_from_moments
from bidsrecon.parallel import fixed_blocks, in_task_threads, map_tasks, task_threads

#: Units of a layer accumulated by one task (:mod:`bidsrecon.parallel`): the sweeps over the
#: outputs run in parallel by blocks of this many units, fixed so the sums do not depend on the
#: number of threads.
ACCUMULATED_UNITS = 8192


def iter_feature_batches(encoder, images, layers, batch_size=16, progress=False, cache=None, feature_files=None):
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
    cache : FeatureCache, optional
        Read the features it holds and write those it lacks; features of the layers it keeps
        are yielded rounded as stored (see :mod:`bidsrecon.features.cache`).
    feature_files : FeatureFiles, optional
        Read the features of the images from these files (in the same order) instead: the
        encoder does not run and ``cache`` is not used.

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
    starts = range(0, n_images, batch_size)
    # One image per task (see _forward); the caller's code between batches runs in the block too.
    if feature_files is not None:
        yield from _file_batches(feature_files, n_images, layers, starts, batch_size, progress)
        return
    with task_threads(), tqdm(total=n_images, unit="image", desc="encoder", disable=not progress) as bar:
        if cache is None:
            for start in starts:
                stop = min(start + batch_size, n_images)
                yield start, _forward(encoder, _image_batch(images, start, stop), layers)
                bar.update(stop - start)
            return
        # With a cache, one thread reads (and computes what is missing) one batch ahead and
        # another writes new entries, so disk time overlaps the forward passes and the
        # caller's work instead of adding to them.
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
            writes = deque()

            def read(start):
                batch = _image_batch(images, start, min(start + batch_size, n_images))
                return _cached_forward(encoder, batch, layers, cache)

            upcoming = reader.submit(read, starts[0]) if starts else None
            for position, start in enumerate(starts):
                features, new_entries = upcoming.result()
                if position + 1 < len(starts):
                    upcoming = reader.submit(read, starts[position + 1])
                # At most two batches of entries wait for the disk (memory stays bounded).
                while len(writes) >= 2:
                    writes.popleft().result()
                writes.append(writer.submit(_store_entries, cache, new_entries))
                yield start, features
                bar.update(len(next(iter(features.values()))))
            for write in writes:
                write.result()  # a failed write is an error of this pass


def _file_batches(feature_files, n_images, layers, starts, batch_size, progress):
    """:func:`iter_feature_batches` from files: one thread reads the next batch while this one is used."""
    if len(feature_files) != n_images:
        raise ValueError(f"feature_files names {len(feature_files)} images; there are {n_images}.")
    with ThreadPoolExecutor(1) as reader, \
            tqdm(total=n_images, unit="image", desc="features", disable=not progress) as bar:
        def read(start):
            return feature_files.batch(start, min(start + batch_size, n_images), layers)

        upcoming = reader.submit(read, starts[0]) if starts else None
        for position, start in enumerate(starts):
            features = upcoming.result()
            if position + 1 < len(starts):
                upcoming = reader.submit(read, starts[position + 1])
            yield start, features
            bar.update(len(next(iter(features.values()))))


@in_task_threads
def sample_unit_features(encoder, images, layers, n_units=1000, seed=0, batch_size=16,
                         progress=False, cache=None, feature_files=None):
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
    progress : bool, default False
    cache : FeatureCache, optional
        See :func:`iter_feature_batches`. Passing the same cache to :func:`decode_features`
        makes its pass read what this pass computed.
    feature_files : FeatureFiles, optional
        See :func:`iter_feature_batches`.

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
    for start, batch in iter_feature_batches(encoder, images, layers, batch_size, progress,
                                             cache, feature_files):
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


@in_task_threads
def decode_features(encoder, images, coefficients, counts, batch_size=16, progress=True,
                    cache=None, memory_budget=None, feature_std=None, feature_files=None, sampled_units=None):
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
    cache : FeatureCache, optional
        See :func:`iter_feature_batches`.
    memory_budget : int, optional
        Bytes this call may allocate (its inputs, the encoder's weights and the interpreter not
        counted). When given, the batch is made smaller, or else the layers are split into
        groups that fit (:func:`plan_decoding`), one pass over the images per group: the later
        passes read from ``cache`` where one is given, and run the encoder again otherwise. One
        pass over all layers when omitted.
    feature_std : dict, optional
        When given, filled (in place) with, per layer, the count-weighted mean over the
        training images of each channel's SD over its positions within the image, ddof 1
        (:func:`bidsrecon.features.spread.channel_sd`): ndarray of shape (C,) float64, (1,) for a
        vector layer. The statistic the lab's decoded-feature corrections scale to (``feat_std0``;
        :func:`bidsrecon.recon.correction.correct_features`). Costs two more passes over each
        batch's features (about 0.6 s a batch of 16 VGG19 images on one CPU core) and one
        image's layer as a temporary; not computed when omitted.
    feature_files : FeatureFiles, optional
        See :func:`iter_feature_batches`.
    sampled_units : dict of str to ndarray of int, optional
        Units (indices into a layer's flattened features) to keep the training images' features
        of, as :func:`sample_unit_features` returns them for the same pass: each layer's value is
        replaced in place by ``(indices, ndarray (n_images, len(indices)) float32)``. A layer
        absent from ``coefficients`` is left as it is.

    Returns
    -------
    decoded : dict of str to ndarray, shape (n_items, *layer_shape) float32
    train_mean : dict of str to ndarray, shape layer_shape float32
        Count-weighted mean ``ȳ`` of the training features.
    train_spread : dict of str to float
        Spread of the training features around ``ȳ``
        (:func:`bidsrecon.features.spread.spread_from_moments`, count-weighted).
    """
    counts = _check_counts(counts, len(images))
    coefficients = _check_coefficients(coefficients, len(images))
    _check_layers(encoder, list(coefficients))
    weights = (counts / counts.sum()).astype(np.float32)
    if memory_budget is None:
        layer_groups = [list(coefficients)]
    else:
        # Features from files: only the decoded layers are known (no forward runs through the others),
        # and a batch is read ahead as with a cache.
        layer_units = (_layer_units(encoder, images) if feature_files is None else
                       {layer: feature_files.units(layer) for layer in encoder.layers if layer in coefficients})
        batch_size, layer_groups = plan_decoding(
            layer_units, {layer: len(c) for layer, c in coefficients.items()},
            batch_size, memory_budget, cached=cache is not None or feature_files is not None)
    decoded, train_mean, train_spread, channel_std = {}, {}, {}, {}
    for group in layer_groups:
        group_coefficients = {layer: coefficients[layer] for layer in group}
        group_units = {layer: sampled_units[layer] for layer in group if layer in (sampled_units or {})}
        results = _decode_layer_group(encoder, images, group_coefficients, weights, batch_size,
                                      progress, cache, with_feature_std=feature_std is not None,
                                      feature_files=feature_files, sampled_units=group_units)
        if sampled_units is not None:
            sampled_units.update(group_units)
        for layer, (layer_decoded, layer_mean, layer_spread, layer_std) in results.items():
            decoded[layer], train_mean[layer], train_spread[layer] = (
                layer_decoded, layer_mean, layer_spread)
            channel_std[layer] = layer_std
    order = list(coefficients)
    if feature_std is not None:
        feature_std.update({layer: channel_std[layer] for layer in order})
    return ({layer: decoded[layer] for layer in order},
            {layer: train_mean[layer] for layer in order},
            {layer: train_spread[layer] for layer in order})


def _layer_units(encoder, images):
    """Units per image of every layer of the encoder, from one forward of the first image."""
    features = _forward(encoder, _image_batch(images, 0, 1), list(encoder.layers))
    return {layer: int(features[layer][0].size) for layer in encoder.layers}


def _decode_layer_group(encoder, images, coefficients, weights, batch_size, progress, cache,
                        with_feature_std=False, feature_files=None, sampled_units=None):
    """One pass accumulating the decoded features, mean and spread of a group of layers.

    With ``with_feature_std``, also the weighted mean over images of each channel's SD within
    the image (ddof 1), from the raw features of each batch (an image's own channel mean is
    needed, so per-unit moments cannot give it). ``sampled_units`` (layer: unit indices) are
    replaced in place by ``(indices, features of those units for every image)``.

    Returns
    -------
    dict of str to (decoded, train_mean, train_spread, feature_std or None)
    """
    coefficients_f32 = {layer: torch.from_numpy(layer_coefficients.astype(np.float32))
                        for layer, layer_coefficients in coefficients.items()}
    # Features are accumulated relative to a provisional centre (the first batch's mean) so that
    # float32 sums lose precision relative to the features' spread, not to their mean.
    centre, decoded, mean_offset, mean_square_offset, layer_shape = {}, {}, {}, {}, {}
    channel_sd_sum = {}
    gathered, gathered_start, gathered_count = {}, 0, 0

    def accumulate_block(task):
        layer, columns = task
        offset = gathered[layer][:gathered_count, columns]
        offset -= centre[layer][columns]
        stop = gathered_start + gathered_count
        # In place, through torch: no (n_items × units) temporary per sweep.
        torch.from_numpy(decoded[layer][:, columns]).addmm_(coefficients_f32[layer][:, gathered_start:stop],
                                                            torch.from_numpy(offset))
        # einsum's own loop, not a BLAS call: numpy's BLAS threads alternating with torch's
        # made this loop several times slower on a 16-core machine.
        mean_offset[layer][columns] += np.einsum("i,ij->j", weights[gathered_start:stop], offset)
        mean_square_offset[layer][columns] += np.einsum("i,ij,ij->j", weights[gathered_start:stop], offset,
                                                        offset)

    def accumulate():
        # Blocks of units fixed by the layer's size, each one task on one thread
        # (bidsrecon.parallel): the sums are then the same bits whatever the thread count.
        map_tasks(accumulate_block, [(layer, columns) for layer in coefficients_f32
                                     for columns in fixed_blocks(decoded[layer].shape[1], ACCUMULATED_UNITS)])

    kept_units = {layer: (np.asarray(indices), np.empty((len(images), len(indices)), np.float32))
                  for layer, indices in (sampled_units or {}).items()}
    # Batches are gathered (copied into one buffer per layer) and accumulated together.
    for start, batch in iter_feature_batches(encoder, images, list(coefficients), batch_size,
                                             progress, cache, feature_files):
        n_batch = len(next(iter(batch.values())))
        if gathered and gathered_count + n_batch > len(next(iter(gathered.values()))):
            accumulate()
            gathered_count = 0
        if not gathered_count:
            gathered_start = start
        for layer in coefficients_f32:
            flat = batch[layer].reshape(n_batch, -1)
            if layer not in centre:
                layer_shape[layer] = batch[layer].shape[1:]
                (centre[layer], decoded[layer], mean_offset[layer], mean_square_offset[layer],
                 gathered[layer]) = _layer_sums(flat, len(coefficients_f32[layer]), batch_size)
            gathered[layer][gathered_count:gathered_count + n_batch] = flat
            if layer in kept_units:
                kept_units[layer][1][start:start + n_batch] = flat[:, kept_units[layer][0]]
            if with_feature_std:
                # Weighted sum over the batch's images of each channel's SD within the image.
                batch_sd = weights[start:start + n_batch] @ channel_sd(batch[layer], ddof=1)
                channel_sd_sum[layer] = channel_sd_sum.get(layer, 0.0) + batch_sd
        gathered_count += n_batch
    if gathered_count:
        accumulate()
    if sampled_units is not None:
        sampled_units.update(kept_units)

    return {layer: (*_finish_layer(layer_coefficients, decoded[layer], centre[layer], mean_offset[layer],
                                   mean_square_offset[layer], layer_shape[layer]),
                    channel_sd_sum.get(layer) if with_feature_std else None)
            for layer, layer_coefficients in coefficients.items()}


def _layer_sums(flat, n_items, batch_size):
    """A layer's accumulators, from its first batch ``flat`` (b, units): the provisional centre
    (the batch's mean), the decoded features about it (n_items, units) and the weighted moment
    sums about it, all zero, and the buffer the batches are gathered in."""
    return (flat.mean(axis=0), np.zeros((n_items, flat.shape[1]), np.float32), np.zeros(flat.shape[1]),
            np.zeros(flat.shape[1]), np.empty((ACCUMULATED_BATCHES * batch_size, flat.shape[1]), np.float32))


def _finish_layer(layer_coefficients, decoded, centre, mean_offset, mean_square_offset, shape):
    """A layer's decoded features (completed in place), training mean and spread, from its sums."""
    # Moments about the centre give the same variance as raw moments, without cancellation.
    spread = spread_from_moments(mean_offset.reshape(shape), mean_square_offset.reshape(shape))
    mean = (centre + mean_offset).astype(np.float32).reshape(shape)
    # A_u F + (1 − s) ȳ = A_u (F − c) + c + (1 − s)(ȳ − c), with s the coefficients' row sums.
    mean_share = (1.0 - layer_coefficients.sum(axis=1)).astype(np.float32)
    decoded_layer = torch.from_numpy(decoded)
    decoded_layer += torch.from_numpy(centre)
    decoded_layer.addr_(torch.from_numpy(mean_share), torch.from_numpy(mean_offset.astype(np.float32)))
    return decoded.reshape((len(layer_coefficients),) + shape), mean, spread


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
