"""The decoding stage: from one participant's samples to the decoded features of every test item.

Two entry points return the same :class:`DecodedItems`:

- :func:`fit_and_decode` fits a decoder on the training trials (kernel ridge over every unit,
  streamed; or the lab's per-unit ridge), saves it, and decodes the test items. The training
  images' features are the encoder's, or read from a features folder (``--features-dir``,
  :mod:`bidsrecon.features.files`) when one is given;
- :func:`apply_saved` applies a kernel ridge decoder saved by an earlier run (``--decoders-dir``).
  The decoder was checked against this run's data and settings when the participant was planned
  (:func:`bidsrecon.decoding.saved.check_saved_decoder`); here it is only read. Per-unit
  decoders, ours or the Kamitani lab's, are applied through their cookbook folders
  (:mod:`bidsrecon.decoding.folders_stage`).

Both average the trials of each test item first (the paper's choice, :func:`average_test_items`).

The kernel ridge decoder's schedule: the penalty of each layer is chosen by cross-validation on
the sampled units of every training image (one pass over them), then one more pass decodes every
unit. Two ways to make the first pass cheaper were measured with ``bench/decode_scale.py`` at full
scale (1,200 images, 19 VGG19 layers at 224 px; the target: within 1.5 passes, each layer's
decoding accuracy within 0.005 of the penalty chosen as above):

- ``penalty_size`` (``--penalty-image-size``): the first pass runs on every image resized to that
  size, so every sample still takes part in the cross-validation and only the units are a proxy
  (the same images' features at a smaller scale). At 112 px for 224 (a quarter of a pass) it took
  1.33-1.37 passes in all (two runs), chose the same penalty in 16 of 19 layers and one grid step off in the others,
  and every layer's accuracy stayed within 0.0024. It is opt-in: the bench's images are enlarged
  8 x 8 colour patterns, which look alike at half size; natural images have not been measured.
- ``cv_images`` (``penalty_images(n, seed, share)``): the first pass runs on a share of the images.
  At 0.15 it took 1.20 passes, but a cross-validation on 180 images chose penalties 3 to 1,000
  times smaller than on all 1,200 (its folds train on 144 images, against 960), and every layer's
  accuracy fell, by up to 0.030 (conv4_1). Not offered on the command line.
"""
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bidsrecon import __version__
from bidsrecon.decoding.artifact import load_decoder, load_voxel_indices, save_decoder, save_per_unit_decoder
from bidsrecon.decoding.fastl2lir_folders import (
    FOLDERS_NAME,
    write_fastl2lir_folders,
)
from bidsrecon.decoding.kernel_ridge import KernelRidgeDecoder
from bidsrecon.decoding.per_unit import decode_per_unit
from bidsrecon.decoding.pixel_denoise import suppress_noise
from bidsrecon.decoding.pixel_inversion import PIXEL_DECODER_SHARES, fit_pixel_inversion
from bidsrecon.decoding.pixel_prf import NoResponsiveVoxels, fit_prf_decoder
from bidsrecon.decoding.pixels import (
    PIXEL_LAYER,
    PIXEL_PARTS,
    decode_pixel_parts,
    pixel_parts,
    pixel_targets,
)
from bidsrecon.decoding.prf_energy import fit_energy_model, refine
from bidsrecon.decoding.sidecar import _mask_summary, decoder_paths, read_decoder_description
from bidsrecon.decoding.stream import decode_features, sample_unit_features
from bidsrecon.decoding.voxel_selection import select_voxels, selection_method
from bidsrecon.encoders.base import file_sha256
from bidsrecon.evaluation.decoding_accuracy import decoding_accuracy
from bidsrecon.features.files import FeatureFiles
from bidsrecon.images import load_images, resize_images
from bidsrecon.spec import TRAINING


@dataclass
class DecodedItems:
    """What the decoding stage hands on: decoded features of the test items and the decoder's files.

    ``decoded``, ``train_mean`` and ``train_spread`` are dicts by layer (the encoder's layers,
    then the ``pixels`` pseudo-layer when decoded); ``feature_std`` is the lab's per-channel SD
    within an image for the encoder's layers, or None when it was not asked for.
    """

    layers: list  # the encoder's layers decoded (without the pixels pseudo-layer)
    items: pd.DataFrame  # set, stimulus, n_trials: one row per test item, the order of ``decoded``
    decoded: dict
    train_mean: dict
    train_spread: dict
    feature_std: dict
    decoder_arrays: str  # the decoder's safetensors
    decoder_sidecar: str  # and its JSON sidecar


def average_test_items(samples, trials):
    """Average the trials of each test item.

    Parameters
    ----------
    samples : ndarray, shape (n_trials, n_voxels)
    trials : DataFrame
        One row per sample, with ``set`` and ``stimulus`` columns.

    Returns
    -------
    items : DataFrame
        ``set``, ``stimulus``, ``n_trials``: each test item in order of first appearance.
    item_samples : ndarray, shape (n_items, n_voxels)
    """
    test = (trials["set"] != TRAINING).to_numpy()
    items = trials[test].groupby(["set", "stimulus"], sort=False).size().rename("n_trials").reset_index()
    item_samples = np.stack([
        samples[test & (trials["set"] == row.set).to_numpy() & (trials["stimulus"] == row.stimulus).to_numpy()]
        .mean(axis=0)
        for row in items.itertuples()
    ])
    return items, item_samples


def fit_and_decode(samples, trials, stimuli, encoder, *, layers, image_size, stem, mask_file, method="kernel",
                   cv_units=1000, n_voxels=0, seed=0, cache=None, memory_budget=None, with_feature_std=False,
                   features_dir=None, cv_images=None, penalty_size=None, pixel_decoder="ridge"):
    """Fit a decoder on the training trials, save it at ``stem``, and decode every test item.

    Parameters
    ----------
    samples : ndarray, shape (n_trials, n_voxels)
        Every run's samples, in the order of ``trials``.
    trials : DataFrame
        ``set`` and ``stimulus`` of each sample; the training set's rows train the decoder.
    stimuli : Series
        Stimulus name -> image file.
    encoder : bidsrecon.encoders.base.Encoder
    layers : sequence of str
        Layers to decode (empty: the encoder's default).
    image_size : int
    stem : str
        Path without extension of the decoder's files.
    mask_file : str
        The voxel mask the samples were taken in (recorded with the decoder).
    method : {"kernel", "fastl2lir"}
        Kernel ridge over every unit, streamed; or the lab's per-unit ridge.
    cv_units : int
        Units per layer sampled to choose the penalty.
    n_voxels : int
        Keep the voxels ranked best on the training trials (0: all).
    seed : int
    cache : bidsrecon.features.cache.FeatureCache, optional
    memory_budget : bidsrecon.decoding.memory budget (budget_within), optional
    with_feature_std : bool
        Also keep the lab's per-channel SD within an image, averaged over training images.
    features_dir : str or Path, optional
        A features folder in bdpy's layout (``<layer>/<stimulus name>.mat``) holding every
        training image's features of ``layers`` in the encoder's shapes (checked before the run,
        :func:`bidsrecon.labformats.features.check_features`): the decoder is trained on those
        numbers and the encoder does not run on the training images (``cache`` is not used).
    cv_images : ndarray of int, optional
        Kernel ridge: the training images (indices into the sorted training stimulus names) the
        penalty is chosen on; default every one (see the module docstring).
    penalty_size : int, optional
        Kernel ridge: the side, in pixels, of the images the penalty's pass runs the encoder on,
        when smaller than ``image_size`` (see the module docstring); default ``image_size``. Not
        with ``features_dir``.
    pixel_decoder : {"ridge", "inversion", "both", "prf"}
        Kernel ridge: how the pixels pseudo-layer is decoded: by the kernel ridge; its luminance by
        inverting an encoding model (:mod:`bidsrecon.decoding.pixel_inversion`), or the mean of
        the two (:data:`PIXEL_DECODER_SHARES`); or the whole small image by inverting the voxels'
        pRF models (:mod:`bidsrecon.decoding.pixel_prf`; not saved: :func:`apply_saved` fits them
        again from the saved training samples).

    Returns
    -------
    DecodedItems
    """
    training = (trials["set"] == TRAINING).to_numpy()
    train_names, image_index = np.unique(trials.loc[training, "stimulus"], return_inverse=True)
    counts = np.bincount(image_index, minlength=len(train_names))
    selection, kept = {"Method": "none", "Voxels": int(samples.shape[1])}, None
    if n_voxels and n_voxels < samples.shape[1]:
        # Ranked on training trials only, so no test data steers the choice.
        kept = select_voxels(samples[training], image_index, n_voxels)
        selection = {"Method": selection_method(image_index), "Voxels": len(kept), "Of": int(samples.shape[1])}
        samples = samples[:, kept]
    items, item_samples = average_test_items(samples, trials)
    layers = list(layers) or list(encoder.default_layers)
    # uint8: 1,200 stimuli at 224 px take 180 MB instead of 720 MB while the features stream.
    images = load_images([stimuli[name] for name in train_names], image_size, dtype=np.uint8)
    description = dict(
        encoder_name=encoder.name, encoder_weights_sha256=encoder.weights_sha256, image_size=image_size,
        training_stimuli=list(train_names), training_stimulus_hashes=[file_sha256(stimuli[name]) for name in train_names],
        voxel_mask_file=mask_file, software_version=__version__, voxel_indices=kept)
    extra = {"EncoderDescription": encoder.description, "TrainingImages": int(len(train_names)),
             "VoxelSelection": selection}
    feature_files = None
    if features_dir is not None:
        feature_files, cache = FeatureFiles(features_dir, train_names), None
        extra["TrainingFeatures"] = str(features_dir)
    if method == "fastl2lir":
        decoded, train_mean, train_spread, feature_std, decoders = decode_per_unit(
            encoder, images, layers, samples[training], image_index, item_samples, counts, cache, feature_files)
        paths = save_per_unit_decoder(stem, decoders, **description, extra_fields=extra)
        # The same decoders in the Kamitani lab's cookbook layout, for its predict script.
        unit_shapes = {layer: decoded[layer].shape[1:] for layer in decoders}
        write_fastl2lir_folders(
            Path(stem).parent / FOLDERS_NAME, decoders, unit_shapes, subject=Path(stem).name.split("_")[0],
            voxel_mask=_mask_summary(mask_file), voxel_indices=kept,
            extra_fields={"Encoder": encoder.name, "EncoderWeightsSHA256": encoder.weights_sha256,
                          "ImageSize": int(image_size), "SoftwareVersion": __version__,
                          # The folders keep each unit's SD (ddof 1), not the images' moments: the
                          # spread as fitted, so that applying them later corrects alike.
                          "TrainingSpread": {layer: float(train_spread[layer]) for layer in decoders}})
    else:
        # The penalty's pass: a sample of units of the penalty images (all by default).
        chosen = slice(None) if cv_images is None else cv_images
        penalty_pass_images, penalty_cache = images[chosen], cache
        if penalty_size is not None and penalty_size < image_size:
            if feature_files is not None:
                raise ValueError("penalty_size needs the encoder's pass; the features come from files here.")
            # Features of smaller images are not the cached ones of these images.
            penalty_pass_images, penalty_cache = resize_images(penalty_pass_images, penalty_size), None
        cv_targets, _ = sample_unit_features(
            encoder, penalty_pass_images, layers, n_units=cv_units, seed=seed, cache=penalty_cache,
            feature_files=None if feature_files is None else FeatureFiles(features_dir, train_names[chosen]))
        # The pixels pseudo-layer's two parts are two more targets, every value of them
        # (bidsrecon.decoding.pixels).
        pixels = pixel_targets(images, image_size)
        parts = pixel_parts(pixels)
        cv_targets.update({part: values[chosen].reshape(len(values[chosen]), -1) for part, values in parts.items()})
        # Alpha is chosen for each count of trials the test items average (REFERENCE.md §8).
        test_trials = items["n_trials"].to_numpy()
        decoder = KernelRidgeDecoder(random_state=seed).fit(samples[training], image_index, cv_targets,
                                                            test_trials=test_trials, cv_images=cv_images)
        if pixel_decoder in ("inversion", "both"):
            # The luminance also by inverting an encoding model (bidsrecon.decoding.pixel_inversion).
            decoder.inversions_ = {PIXEL_PARTS[0]: (
                fit_pixel_inversion(decoder.X_, image_index, parts[PIXEL_PARTS[0]][:, 0], counts, seed),
                PIXEL_DECODER_SHARES[pixel_decoder])}
        extra["PenaltyImages"] = int(len(train_names) if cv_images is None else len(cv_images))
        extra["PenaltyImageSize"] = int(penalty_pass_images.shape[1])
        coefficients = decoder.coefficients(item_samples, test_trials)
        decoded, train_mean, train_spread, feature_std = _decode_with_pixels(
            encoder, images, coefficients, counts, cache, memory_budget, pixels, with_feature_std, feature_files)
        if pixel_decoder == "prf":
            extra["PixelDecoder"] = _decode_pixels_by_prf(decoded, decoder, image_index, pixels, counts,
                                                          item_samples, test_trials)
        extra.update({
            "CrossValidationAlphas": [float(a) for a in decoder.alphas_],
            "CrossValidationScores": {layer: [float(v) for v in decoder.cv_scores_[layer]]
                                      for layer in [*layers, *PIXEL_PARTS]},
        })
        paths = save_decoder(stem, decoder, layers=[*layers, *PIXEL_PARTS], **description, extra_fields=extra)
    arrays, sidecar = (str(path) for path in paths)
    return DecodedItems(layers, items, decoded, train_mean, train_spread, feature_std, arrays, sidecar)


def _decode_pixels_by_prf(decoded, decoder, image_index, pixels, counts, item_samples, test_trials):
    """Replace the ridge's small image in ``decoded`` by the pRF decoder's; return the sidecar's record.

    Where no voxel's pRF beats chance (too few or too noisy voxels) the ridge's image stays, with
    a warning and the reason in the record.
    """
    try:
        prf = fit_prf_decoder(decoder.X_, image_index, pixels, counts)
    except NoResponsiveVoxels as error:
        warnings.warn(f"--pixel-decoder prf: {error} The small image is the kernel ridge's instead.", stacklevel=2)
        return {"Method": "ridge", "Requested": "prf", "Reason": str(error)}
    energy = fit_energy_model(prf, decoder.X_, image_index, pixels, counts)
    z = (item_samples - decoder.voxel_mean_) / decoder.voxel_std_
    decoded[PIXEL_LAYER] = suppress_noise(refine(prf, energy, z, test_trials), prf.noise_variance(z, test_trials),
                                          prf.channel_mean)
    return {"Method": "prf", "VoxelsKept": int(len(prf.voxels))}


#: With a share (``penalty_images``), at least this many images choose the penalty.
PENALTY_IMAGES_MIN = 150


def penalty_images(n_images, seed, share):
    """A seeded ``share`` of the training images for the penalty's cross-validation: ascending
    indices, at least ``PENALTY_IMAGES_MIN`` of them, or None for all (see the module docstring)."""
    n_chosen = min(n_images, max(PENALTY_IMAGES_MIN, math.ceil(share * n_images)))
    if n_chosen >= n_images:
        return None
    return np.sort(np.random.default_rng([seed, n_images]).choice(n_images, n_chosen, replace=False))


def apply_saved(samples, trials, stimuli, encoder, stem, *, image_size, cache=None, memory_budget=None,
                with_feature_std=False):
    """Decode every test item with the decoder saved at ``stem``.

    Each item is decoded as ``A_u F + (1 - sum_j A_u[:, j]) ybar`` with the penalty chosen for
    its count of trials (the nearest the decoder has), ``F`` the features of the decoder's
    training images.

    Parameters
    ----------
    samples, trials, stimuli, encoder, image_size, cache, memory_budget, with_feature_std :
        As for :func:`fit_and_decode`; ``trials`` need hold no training rows.
    stem : str
        Path without extension of the saved decoder's files, checked when the participant was
        planned (:func:`bidsrecon.decoding.saved.check_saved_decoder`).

    Returns
    -------
    DecodedItems
        ``decoder_arrays`` and ``decoder_sidecar`` are the saved decoder's own files.
    """
    description = read_decoder_description(stem)
    kept = load_voxel_indices(stem)
    if kept is not None:
        samples = samples[:, kept]
    items, item_samples = average_test_items(samples, trials)
    decoder = load_decoder(stem)
    train_names = description["TrainingStimuli"]
    images = load_images([stimuli[name] for name in train_names], image_size, dtype=np.uint8)
    # The training mean is weighted by each image's training trials, as when the decoder was fitted.
    counts = np.bincount(decoder.image_index_, minlength=len(train_names))
    coefficients = decoder.coefficients(item_samples, items["n_trials"].to_numpy())
    # A decoder saved with the pixels pseudo-layer decodes it too (bidsrecon.decoding.pixels).
    pixels = pixel_targets(images, image_size) if PIXEL_PARTS[0] in coefficients else None
    decoded, train_mean, train_spread, feature_std = _decode_with_pixels(
        encoder, images, coefficients, counts, cache, memory_budget, pixels, with_feature_std)
    if pixels is not None and (description.get("PixelDecoder") or {}).get("Method") == "prf":
        # The pRF and energy models are not saved: they are fitted again from what is, the
        # training samples and images, by the same deterministic code, so the small image is
        # the one the training run decoded (a minute at full scale).
        _decode_pixels_by_prf(decoded, decoder, decoder.image_index_, pixels, counts, item_samples,
                              items["n_trials"].to_numpy())
    layers = [layer for layer in description["Layers"] if layer not in PIXEL_PARTS]
    arrays, sidecar = (str(path) for path in decoder_paths(stem))
    return DecodedItems(layers, items, decoded, train_mean, train_spread, feature_std, arrays, sidecar)


def decoding_accuracy_table(result, encoder, stimuli, image_size, n_units=10000, seed=0):
    """Profile and pattern correlation of decoded and true features, per test set and layer.

    Scored on a random sample of each layer's units (the same units for every set), so that the
    true features of the test images never have to be held whole. Patterns are centred on the
    training features' mean first (the lab also divides by each unit's training SD, which the
    streamed decoder does not keep yet).

    Parameters
    ----------
    result : DecodedItems
    encoder : bidsrecon.encoders.base.Encoder
    stimuli : Series
        Stimulus name -> image file.
    image_size : int
    n_units : int
        Units sampled per layer.
    seed : int

    Returns
    -------
    DataFrame
        ``set`` then the columns of :func:`bidsrecon.evaluation.decoding_accuracy.decoding_accuracy`.
    """
    items, decoded, layers = result.items, result.decoded, list(result.layers)
    images = load_images([stimuli[name] for name in items["stimulus"]], image_size)
    true, units = sample_unit_features(encoder, images, layers, n_units=n_units, seed=seed)
    if PIXEL_LAYER in decoded:  # every value of the pseudo-layer is scored
        pixels = pixel_targets(images, image_size)
        true[PIXEL_LAYER], units[PIXEL_LAYER] = pixels.reshape(len(pixels), -1), np.arange(pixels[0].size)
        layers = [*layers, PIXEL_LAYER]
    tables = []
    for set_name, rows in items.groupby("set", sort=False):
        index = rows.index.to_numpy()
        sampled = {layer: decoded[layer].reshape(len(items), -1)[index][:, units[layer]] for layer in layers}
        centre = {layer: result.train_mean[layer].reshape(-1)[units[layer]] for layer in layers}
        table = decoding_accuracy(sampled, {layer: true[layer][index] for layer in layers}, train_mean=centre)
        tables.append(table.assign(set=set_name))
    table = pd.concat(tables, ignore_index=True)
    return table[["set", *[c for c in table.columns if c != "set"]]]


def _decode_with_pixels(encoder, images, coefficients, counts, cache, budget, pixels, with_feature_std,
                        feature_files=None):
    """:func:`decode_features` for the encoder's layers, plus the ``pixels`` pseudo-layer when its
    coefficients are among ``coefficients`` (``pixels``: its training targets).

    Returns decoded, train_mean, train_spread and, ``with_feature_std``, the lab's per-channel
    SD within an image averaged over the training images for the encoder's layers (else None).
    """
    coefficients = dict(coefficients)
    pixel_coefficients = {part: coefficients.pop(part) for part in PIXEL_PARTS if part in coefficients} or None
    feature_std = {} if with_feature_std else None
    decoded, train_mean, train_spread = decode_features(encoder, images, coefficients, counts, cache=cache,
                                                        memory_budget=budget, feature_std=feature_std,
                                                        feature_files=feature_files)
    if pixel_coefficients is not None:
        decoded[PIXEL_LAYER], train_mean[PIXEL_LAYER], train_spread[PIXEL_LAYER] = decode_pixel_parts(
            pixel_coefficients, pixels, counts)
    return decoded, train_mean, train_spread, feature_std
