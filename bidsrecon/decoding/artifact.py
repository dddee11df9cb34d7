"""The decoder artifact: a fitted :class:`KernelRidgeDecoder` on disk, and its checked reloading.

A decoder is written as two files sharing a stem (``<stem>.safetensors`` and ``<stem>.json``):

- the safetensors file holds the fitted arrays — z-scored training samples ``X``, the voxels'
  training mean and SD, the training image of each sample, the alpha grid searched, each layer's
  cross-validation scores and chosen alpha, and optionally the positions of the decoder's voxels
  within the voxel mask;
- the JSON sidecar says what the decoder applies to — encoder and weights hash, image size,
  layers and alphas, the voxel mask (file hash, grid, hash of its voxel set), the training
  stimuli in coefficient-column order with the sha256 of each image file, the software version —
  and the sha256 of the safetensors file, which ties the pair together.

Decoded features are ``A_u F + (1 − Σ_j A_u[:, j]) ȳ`` with ``F`` the features of the training
images (module :mod:`bidsrecon.decoding.kernel_ridge`), so applying a saved decoder needs those
same images and the same encoder: :func:`load_decoder` checks both, and the voxel mask, before
returning the decoder. Loading reads safetensors and JSON only; nothing is unpickled.

The per-unit decoders (the lab's mode) are written the same way by
:func:`save_per_unit_decoder`. Where the two files lie, reading the sidecar and checking it
against a run are :mod:`bidsrecon.decoding.sidecar`'s; decoded features in HDF5 are
:mod:`bidsrecon.decoding.decoded_features`'.
"""
import json

import numpy as np

from bidsrecon.arrays import load_arrays, save_arrays
from bidsrecon.decoding.kernel_ridge import KernelRidgeDecoder
from bidsrecon.decoding.pixel_inversion import from_arrays
from bidsrecon.decoding.sidecar import (
    _FORMAT_NAME,
    _PER_UNIT_FORMAT_NAME,
    ARTIFACT_FORMAT,
    _check_expected,
    _check_mask,
    _check_stimulus_files,
    _mask_summary,
    decoder_paths,
    is_per_unit,
    read_decoder_description,
)
from bidsrecon.encoders.base import file_sha256
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError


def save_decoder(path_stem, decoder, *, layers, encoder_name, encoder_weights_sha256,
                 image_size, training_stimuli, training_stimulus_hashes, voxel_mask_file,
                 software_version, voxel_indices=None, extra_fields=None):
    """Write a fitted decoder as ``<stem>.safetensors`` plus a JSON sidecar.

    Parameters
    ----------
    path_stem : str or Path
        Path without extension; parent folders are created.
    decoder : KernelRidgeDecoder
        Fitted.
    layers : list of str
        Layers to keep, each fitted (a key of ``decoder.alpha_``), in the order to record.
    encoder_name : str
    encoder_weights_sha256 : str or None
        None for random weights.
    image_size : int
        Side in pixels the stimuli were resized to before the encoder.
    training_stimuli : list of str
        Stimulus names in the order of the coefficients' columns (``n_images_`` of them).
    training_stimulus_hashes : list of str
        sha256 of each training stimulus' image file, same order.
    voxel_mask_file : str or Path
        NIfTI mask the samples were taken from.
    software_version : str
    voxel_indices : array-like of int, optional
        Positions, among the mask's voxels in sample order, of the voxels the decoder uses (after
        a voxel selection); None when it uses every voxel of the mask.
    extra_fields : dict, optional
        More JSON-serialisable sidecar fields (for example how the voxels were selected); they
        may not replace the fields written here.

    Returns
    -------
    arrays_path, sidecar_path : Path
    """
    _check_fitted(decoder)
    layers = _check_layers(layers, decoder.alpha_)
    training_stimuli, training_stimulus_hashes = _check_stimuli(
        training_stimuli, training_stimulus_hashes, decoder.n_images_)
    n_voxels = decoder.X_.shape[1]
    mask = _mask_summary(voxel_mask_file)
    voxel_indices = _check_voxel_indices(voxel_indices, n_voxels, mask["Voxels"])

    arrays_path, sidecar_path = decoder_paths(path_stem)
    sidecar = {
        **_sidecar_head(_FORMAT_NAME, "kernel ridge regression, one penalty per layer chosen by "
                        "grouped cross-validation", encoder_name, encoder_weights_sha256,
                        image_size, layers),
        "Alpha": {layer: float(decoder.alpha_[layer]) for layer in layers},
        "Parameters": _parameters_to_json(decoder),
        "TrainingSamples": int(decoder.X_.shape[0]),
        "TrainingStimuli": training_stimuli,
        "TrainingStimulusSHA256": training_stimulus_hashes,
        "VoxelMask": mask,
        "Voxels": int(n_voxels),
        "SoftwareVersion": str(software_version),
        "ArraysFile": arrays_path.name,
    }
    clashes = sorted(set(extra_fields or {}) & (set(sidecar) | {"ArraysSHA256"}))
    if clashes:
        raise ValueError(f"extra_fields may not replace the sidecar's own fields {clashes}.")
    sidecar.update(extra_fields or {})

    arrays = {
        "fit": {"X": decoder.X_, "voxel_mean": decoder.voxel_mean_,
                "voxel_std": decoder.voxel_std_,
                "image_index": np.asarray(decoder.image_index_, dtype=np.int64),
                "alpha_grid": np.asarray(decoder.alphas_, dtype=np.float64)},
        "alpha": {layer: np.array([decoder.alpha_[layer]], dtype=np.float64) for layer in layers},
        "cv_scores": {layer: np.asarray(decoder.cv_scores_[layer], dtype=np.float64)
                      for layer in layers},
    }
    if getattr(decoder, "voxel_weight_", None) is not None:
        arrays["fit"]["voxel_weight"] = np.asarray(decoder.voxel_weight_, dtype=np.float64)
    by_trials = getattr(decoder, "alpha_by_trials_", None)
    if by_trials:
        # Alphas chosen per count of trials a test item averages: rows (count, alpha).
        sidecar["AlphaByTestTrials"] = {layer: {str(count): float(alpha) for count, alpha in by_trials[layer].items()}
                                        for layer in layers}
        arrays["alpha_by_trials"] = {layer: np.array(sorted(by_trials[layer].items()), dtype=np.float64)
                                     for layer in layers}
        arrays["cv_scores_by_trials"] = {
            layer: np.stack([decoder.cv_scores_by_trials_[layer][count] for count in sorted(by_trials[layer])])
            for layer in layers}
    if voxel_indices is not None:
        arrays["fit"]["voxel_indices"] = voxel_indices
    # Layers also decoded by inverting an encoding model (bidsrecon.decoding.pixel_inversion).
    inversions = getattr(decoder, "inversions_", {})
    if inversions:
        sidecar["Inversion"] = {
            layer: {"Share": float(share), "Threshold": inversion.threshold, "Smoothness": inversion.smoothness,
                    "Contrast": inversion.contrast,
                    "VoxelsKept": int(np.count_nonzero(np.any(inversion.projection, axis=0))),
                    "CrossValidationScores": np.asarray(inversion.cv_scores, dtype=float).tolist()}
            for layer, (inversion, share) in inversions.items()}
        arrays.update({f"inversion_{layer}": inversion.arrays() for layer, (inversion, _) in inversions.items()})
    return _write_pair(arrays_path, arrays, sidecar_path, sidecar)


def save_per_unit_decoder(path_stem, decoders, *, encoder_name, encoder_weights_sha256,
                          image_size, training_stimuli, training_stimulus_hashes, voxel_mask_file,
                          software_version, voxel_indices=None, extra_fields=None):
    """Write fitted per-unit decoders (the lab's mode), one per layer, with a JSON sidecar.

    The arrays are each unit's selected voxels (int32), weights and bias (float32, z-scored
    units), and the voxels' and units' training mean and SD, under ``<layer>/...``. The sidecar
    says what they apply to, as :func:`save_decoder`'s does. There is no loader of the arrays: the fitting
    stage also writes the same decoders in the Kamitani lab's FastL2LiR folders, which
    :mod:`bidsrecon.decoding.fastl2lir_folders` reads, and applying a saved per-unit decoder
    (``--decoders-dir``) reads those, so that one reader serves ours and the lab's.

    Parameters
    ----------
    path_stem : str or Path
    decoders : dict of str to PerUnitDecoder
        Fitted decoder of each layer, in the order to record.
    Other parameters
        As for :func:`save_decoder`.

    Returns
    -------
    arrays_path, sidecar_path : Path
    """
    layers = list(decoders)
    first = decoders[layers[0]]
    n_voxels = len(first.voxel_mean_)
    mask = _mask_summary(voxel_mask_file)
    voxel_indices = _check_voxel_indices(voxel_indices, n_voxels, mask["Voxels"])
    arrays_path, sidecar_path = decoder_paths(path_stem)
    sidecar = {
        **_sidecar_head(_PER_UNIT_FORMAT_NAME, "ridge regression per unit on the voxels most "
                        "correlated with it on the training data (the Kamitani lab's fastl2lir)",
                        encoder_name, encoder_weights_sha256, image_size, layers),
        "Alpha": {layer: float(decoders[layer].alpha) for layer in layers},
        "VoxelsPerUnit": {layer: int(decoders[layer].selected_voxels_.shape[1]) for layer in layers},
        "TrainingStimuli": [str(name) for name in training_stimuli],
        "TrainingStimulusSHA256": [str(value) for value in training_stimulus_hashes],
        "VoxelMask": mask,
        "Voxels": int(n_voxels),
        "SoftwareVersion": str(software_version),
        "ArraysFile": arrays_path.name,
        **(extra_fields or {}),
    }
    arrays = {layer: {"selected_voxels": model.selected_voxels_.astype(np.int32),
                      "coef": model.coef_.astype(np.float32),
                      "intercept": model.intercept_.astype(np.float32),
                      "feature_mean": model.feature_mean_.astype(np.float32),
                      "feature_std": model.feature_std_.astype(np.float32)}
              for layer, model in decoders.items()}
    arrays["voxels"] = {"mean": first.voxel_mean_, "std": first.voxel_std_}
    if voxel_indices is not None:
        arrays["voxels"]["voxel_indices"] = voxel_indices
    return _write_pair(arrays_path, arrays, sidecar_path, sidecar)


def load_decoder(path_stem, *, expected_mask_file=None, expected_encoder=None,
                 expected_weights_sha256=None, expected_image_size=None, stimulus_files=None):
    """Read a decoder written by :func:`save_decoder`, after checking it fits the new data.

    Each ``expected_*`` argument left as None skips its check.

    Parameters
    ----------
    path_stem : str or Path
    expected_mask_file : str or Path, optional
        NIfTI mask the new samples are taken from: it must be on the decoder's grid and hold the
        same voxels (its file may differ, for example re-written by a later run).
    expected_encoder : str, optional
        Name of the encoder the decoded features will be computed with.
    expected_weights_sha256 : str, optional
        sha256 of that encoder's weights.
    expected_image_size : int, optional
    stimulus_files : mapping of str to str or Path, optional
        Stimulus name -> image file; every training stimulus of the decoder must be present,
        with the same content (sha256) it had at training time.

    Returns
    -------
    KernelRidgeDecoder
        Fitted, with the recorded layers only; ``coefficients`` equals the saved decoder's.

    Raises
    ------
    BidsReconError
        Saved files missing, or a training stimulus file missing (exit 66); a mismatching mask,
        encoder, weights, image size or stimulus, or damaged files (exit 64). The message names
        what differs and what to do.
    """
    sidecar = read_decoder_description(path_stem)
    arrays_path, sidecar_path = decoder_paths(path_stem)
    _refuse_per_unit(sidecar, sidecar_path)
    if file_sha256(arrays_path) != sidecar.get("ArraysSHA256"):
        raise BidsReconError(
            f"{arrays_path} does not match the sha256 recorded in {sidecar_path}: the file was "
            "changed or replaced after saving. Copy the decoder's two files together, or "
            "retrain.", EXIT_BAD_ARGUMENTS)
    # The sidecar's path, so that the message says which file of which folder to look at.
    where = f"Saved decoder {sidecar_path}"
    _check_expected(where, "encoder", sidecar["Encoder"], expected_encoder,
                    "Run with the decoder's encoder, or retrain the decoder.")
    _check_expected(where, "encoder weights (sha256)", sidecar["EncoderWeightsSHA256"],
                    expected_weights_sha256,
                    "Run with the weight file it was trained with, or retrain the decoder.")
    _check_expected(where, "image size", sidecar["ImageSize"], expected_image_size,
                    "Run with the decoder's image size, or retrain the decoder.")
    if expected_mask_file is not None:
        _check_mask(where, sidecar["VoxelMask"], _mask_summary(expected_mask_file),
                    expected_mask_file)
    if stimulus_files is not None:
        _check_stimulus_files(where, sidecar["TrainingStimuli"],
                              sidecar["TrainingStimulusSHA256"], stimulus_files)
    return _decoder_from_arrays(load_arrays(arrays_path), sidecar, arrays_path)


def load_voxel_indices(path_stem):
    """Positions, among the mask's voxels, of the voxels a saved decoder uses.

    Parameters
    ----------
    path_stem : str or Path

    Returns
    -------
    ndarray of int64, shape (n_voxels,), or None
        None when the decoder uses every voxel of its mask.
    """
    arrays_path, sidecar_path = decoder_paths(path_stem)
    _refuse_per_unit(read_decoder_description(path_stem), sidecar_path)
    return load_arrays(arrays_path)["fit"].get("voxel_indices")


def _refuse_per_unit(sidecar, sidecar_path):
    """The kernel ridge loaders do not read per-unit decoders (their folders do)."""
    if is_per_unit(sidecar):
        raise BidsReconError(
            f"{sidecar_path} is a per-unit decoder (--decoder fastl2lir), not a kernel ridge decoder: it is "
            f"applied from its FastL2LiR folders beside it (bidsrecon.decoding.folders_stage.apply_saved_per_unit).",
            EXIT_BAD_ARGUMENTS)


def _write_pair(arrays_path, arrays, sidecar_path, sidecar):
    """Write the arrays, then the sidecar with the arrays' hash: a pair interrupted midway never
    loads."""
    arrays_path.parent.mkdir(parents=True, exist_ok=True)
    save_arrays(arrays_path, arrays, metadata={"format": sidecar["Format"],
                                               "layers": json.dumps(sidecar["Layers"])})
    sidecar["ArraysSHA256"] = file_sha256(arrays_path)
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    return arrays_path, sidecar_path


def _sidecar_head(format_name, method, encoder_name, encoder_weights_sha256, image_size, layers):
    """The sidecar fields every decoder artifact starts with."""
    return {"Format": format_name, "FormatVersion": ARTIFACT_FORMAT, "Method": method,
            "Encoder": encoder_name, "EncoderWeightsSHA256": encoder_weights_sha256,
            "ImageSize": int(image_size), "Layers": layers}


def _decoder_from_arrays(arrays, sidecar, arrays_path):
    """Rebuild the fitted estimator; check the arrays agree with each other and the sidecar."""
    fit = arrays.get("fit", {})
    needed = ("X", "voxel_mean", "voxel_std", "image_index", "alpha_grid")
    layers = sidecar["Layers"]
    absent = [f"fit/{name}" for name in needed if name not in fit]
    absent += [f"{group}/{layer}" for group in ("alpha", "cv_scores") for layer in layers
               if layer not in arrays.get(group, {})]
    if absent:
        raise BidsReconError(f"{arrays_path} lacks the arrays {absent}; it was not written by "
                             "bidsrecon's save_decoder.", EXIT_BAD_ARGUMENTS)
    n_samples, n_voxels = fit["X"].shape
    n_images = len(sidecar["TrainingStimuli"])
    image_index = fit["image_index"]
    consistent = (fit["voxel_mean"].shape == (n_voxels,) and fit["voxel_std"].shape == (n_voxels,)
                  and fit.get("voxel_weight", np.zeros(n_voxels)).shape == (n_voxels,)
                  and image_index.shape == (n_samples,) and n_voxels == sidecar["Voxels"]
                  and image_index.min() >= 0 and image_index.max() < n_images)
    if not consistent:
        raise BidsReconError(f"The arrays of {arrays_path} disagree with each other or with its "
                             "sidecar; retrain the decoder.", EXIT_BAD_ARGUMENTS)
    parameters = sidecar.get("Parameters", {})
    decoder = KernelRidgeDecoder(alphas=parameters.get("alphas"),
                                 n_folds=parameters.get("n_folds", 5),
                                 random_state=parameters.get("random_state", 0),
                                 # A decoder saved before voxel weights existed weighed every voxel the same.
                                 voxel_weights=parameters.get("voxel_weights", "none"))
    decoder.X_ = fit["X"]
    decoder.voxel_mean_ = fit["voxel_mean"]
    decoder.voxel_std_ = fit["voxel_std"]
    decoder.voxel_weight_ = fit.get("voxel_weight")
    decoder.image_index_ = image_index.astype(np.intp)
    decoder.n_images_ = n_images
    decoder.alphas_ = fit["alpha_grid"]
    decoder.cv_scores_ = {layer: arrays["cv_scores"][layer] for layer in layers}
    decoder.alpha_ = {layer: float(arrays["alpha"][layer][0]) for layer in layers}
    by_trials = arrays.get("alpha_by_trials", {})
    if all(layer in by_trials for layer in layers):
        decoder.alpha_by_trials_ = {layer: {int(count): float(alpha) for count, alpha in by_trials[layer]}
                                    for layer in layers}
        decoder.cv_scores_by_trials_ = {
            layer: dict(zip(decoder.alpha_by_trials_[layer], arrays["cv_scores_by_trials"][layer]))
            for layer in layers}
        decoder.trial_counts_ = tuple(sorted(decoder.alpha_by_trials_[layers[0]]))
    decoder.inversions_ = {}
    for layer, fields in sidecar.get("Inversion", {}).items():
        group = arrays.get(f"inversion_{layer}", {})
        inversion = from_arrays(group) if {"projection", "back"} <= set(group) else None
        if inversion is None or inversion.projection.shape[1] != n_voxels or inversion.back.shape[0] != n_images:
            raise BidsReconError(f"The inversion arrays of {arrays_path} disagree with its decoder; retrain the "
                                 "decoder.", EXIT_BAD_ARGUMENTS)
        decoder.inversions_[layer] = (inversion, float(fields["Share"]))
    return decoder


def _parameters_to_json(decoder):
    alphas = decoder.alphas
    return {"alphas": None if alphas is None else [float(a) for a in np.ravel(alphas)],
            "n_folds": int(decoder.n_folds),
            "random_state": None if decoder.random_state is None else int(decoder.random_state),
            "voxel_weights": str(decoder.voxel_weights)}


def _check_fitted(decoder):
    if not isinstance(decoder, KernelRidgeDecoder) or not hasattr(decoder, "alpha_"):
        raise ValueError(f"decoder must be a fitted KernelRidgeDecoder; got {decoder!r}.")


def _check_layers(layers, fitted_alphas):
    layers = [str(layer) for layer in layers]
    unknown = [layer for layer in layers if layer not in fitted_alphas]
    if not layers or unknown or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct fitted layers ({list(fitted_alphas)}); got "
                         f"{layers}.")
    return layers


def _check_stimuli(names, hashes, n_images):
    names, hashes = [str(name) for name in names], [str(value) for value in hashes]
    if len(names) != n_images or len(hashes) != n_images:
        raise ValueError(f"The decoder was fitted on {n_images} training images; got "
                         f"{len(names)} stimulus names and {len(hashes)} hashes.")
    if len(set(names)) != len(names):
        raise ValueError("training_stimuli holds repeated names; one per training image "
                         "expected.")
    return names, hashes


def _check_voxel_indices(voxel_indices, n_voxels, n_mask_voxels):
    if voxel_indices is None:
        if n_voxels != n_mask_voxels:
            raise ValueError(f"The decoder has {n_voxels} voxels but the mask {n_mask_voxels}; "
                             "pass voxel_indices when the decoder uses a selection of them.")
        return None
    voxel_indices = np.asarray(voxel_indices)
    if (voxel_indices.shape != (n_voxels,) or not np.issubdtype(voxel_indices.dtype, np.integer)
            or voxel_indices.min() < 0 or voxel_indices.max() >= n_mask_voxels
            or len(np.unique(voxel_indices)) != n_voxels):
        raise ValueError(f"voxel_indices must hold {n_voxels} distinct integers in "
                         f"[0, {n_mask_voxels}); got shape {voxel_indices.shape}, dtype "
                         f"{voxel_indices.dtype}.")
    return voxel_indices.astype(np.int64)
