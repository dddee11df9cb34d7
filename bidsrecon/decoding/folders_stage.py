"""The decoding stage with per-unit decoders in the cookbook's FastL2LiR folders
(:mod:`bidsrecon.decoding.fastl2lir_folders`): no training image is read, the folders hold everything.

- :func:`apply_saved_per_unit` applies the per-unit decoders an earlier run saved
  (``--decoder fastl2lir``, then ``--decoders-dir``);
- :func:`apply_lab_tree` applies the Kamitani lab's own trained tree to their BData samples
  (``--bdata-dir`` with ``--decoders-dir``);
- :func:`apply_fastl2lir_folders`, which both call, decodes samples in a given mask.

Each returns :class:`bidsrecon.decoding.stage.DecodedItems`, the test items averaged first as in
:func:`bidsrecon.decoding.stage.average_test_items`.
"""
import json
from pathlib import Path

import numpy as np

from bidsrecon import __version__
from bidsrecon.decoding.fastl2lir_folders import (
    DESCRIPTION_FILE,
    FOLDERS_NAME,
    read_fastl2lir_folders,
)
from bidsrecon.decoding.pixels import (
    PIXEL_LAYER,
)
from bidsrecon.decoding.sidecar import _mask_summary, decoder_paths, read_decoder_description
from bidsrecon.decoding.stage import DecodedItems, average_test_items
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError
from bidsrecon.features.spread import spread_from_moments


def apply_saved_per_unit(samples, trials, stem):
    """Decode every test item with the per-unit decoders saved at ``stem`` (``--decoder fastl2lir``).

    They are read from their cookbook folders beside the sidecar (``fastl2lir/``,
    :func:`apply_fastl2lir_folders`), which hold the same decoders as the safetensors; the
    folders and the sidecar were checked to agree when the participant was planned
    (:func:`bidsrecon.decoding.saved.check_saved_decoder`).

    Parameters
    ----------
    samples : ndarray, shape (n_trials, n_mask_voxels)
        Every run's samples in the saved voxel mask.
    trials : DataFrame
        ``set`` and ``stimulus`` of each sample.
    stem : str
        Path without extension of the saved decoder's files.

    Returns
    -------
    DecodedItems
        ``feature_std`` is None; ``decoder_arrays`` and ``decoder_sidecar`` are the saved
        decoder's own files.
    """
    description = read_decoder_description(stem)
    result = apply_fastl2lir_folders(samples, trials, Path(stem).parent / FOLDERS_NAME, layers=description["Layers"])
    result.decoder_arrays, result.decoder_sidecar = (str(path) for path in decoder_paths(stem))
    return result


def apply_lab_tree(samples, trials, description, *, stem, mask_file, encoder, image_size):
    """Decode every test item with the Kamitani lab's trained decoders (:mod:`bidsrecon.decoding.lab_tree`).

    Parameters
    ----------
    samples : ndarray, shape (n_trials, n_voxels)
        The BData samples in the voxel mask's C order (:func:`bidsrecon.labformats.bdata.bdata_trials`).
    trials : DataFrame
        ``set`` and ``stimulus`` of each sample.
    description : dict
        What :func:`bidsrecon.decoding.lab_tree.check_lab_tree` returned when the participant was planned,
        with ``VoxelIndices``: the tree's rows are the files' ROI columns, which these put the samples back in.
    stem : str
        Path without extension of the two files written to describe the decoder applied:
        ``<stem>.json`` (a decoder sidecar: the tree, its origin, encoder, layers, mask) and
        ``<stem>.tsv`` (each model file applied and its sha256; ``ArraysSHA256`` is this listing's).
    mask_file : str
        The voxel mask the BData files' voxel_x/y/z made.
    encoder : bidsrecon.encoders.base.Encoder
        Named in the sidecar (the tree was checked to hold its shapes).
    image_size : int

    Returns
    -------
    DecodedItems
        ``train_mean`` and ``train_spread`` come from each unit's training mean and SD in the tree
        (``y_mean``, ``y_norm``), as :func:`apply_fastl2lir_folders` gives them; ``feature_std`` is
        None; ``decoder_arrays`` is the listing, ``decoder_sidecar`` the sidecar.
    """
    from bidsrecon.decoding.lab_tree import ORIGIN, SIDECAR_FORMAT, listing_sha256, tree_files_listing

    result = apply_fastl2lir_folders(samples, trials, description["Tree"], layers=list(description["Layers"]),
                                     description=description)
    listing = tree_files_listing(description)
    arrays, sidecar = Path(f"{stem}.tsv"), Path(f"{stem}.json")
    arrays.write_text(listing)
    sidecar.write_text(json.dumps({
        "Description": f"Not fitted here: {ORIGIN} in {description['Tree']}, applied as trained to the BData "
                       "samples (their ROI's columns in the files' own order, as the lab trained them).",
        "Format": SIDECAR_FORMAT, "FormatVersion": 1, "Tree": description["Tree"],
        "Subject": description["Subject"], "ROI": description["ROI"],
        "Encoder": encoder.name, "EncoderDescription": encoder.description,
        "EncoderWeightsSHA256": encoder.weights_sha256, "ImageSize": int(image_size),
        "Layers": list(result.layers), "LayerShapes": description["Layers"], "Voxels": description["Voxels"],
        "TrainingStimuli": [], "TrainingStimulusSHA256": [], "VoxelMask": _mask_summary(mask_file),
        "Files": arrays.name, "ArraysSHA256": listing_sha256(listing),
        "TrainingSpread": "from each unit's training mean and SD in the tree (y_mean.mat, y_norm.mat)",
        "SoftwareVersion": __version__}, indent=2) + "\n")
    result.decoder_arrays, result.decoder_sidecar = str(arrays), str(sidecar)
    return result


def apply_fastl2lir_folders(samples, trials, root, *, layers=None, description=None):
    """Decode every test item with per-unit decoders in the cookbook's folders (ours or the lab's).

    Parameters
    ----------
    samples : ndarray, shape (n_trials, n_mask_voxels)
        Every run's samples in the voxel mask the folders' description names (its voxels in C order).
    trials : DataFrame
        ``set`` and ``stimulus`` of each sample; ``trials`` need hold no training rows.
    root : str or Path
        The folders' root, with :data:`~bidsrecon.decoding.fastl2lir_folders.DESCRIPTION_FILE`.
    layers : sequence of str, optional
        Layers to decode (default: all the folders hold).
    description : dict, optional
        The description's fields when the folders have no description file (the lab's tree).

    Returns
    -------
    DecodedItems
        ``train_mean`` is each unit's training mean (``y_mean``); ``train_spread`` is the one the
        description records (``TrainingSpread``, ours), else comes from ``y_mean`` and the units'
        training SD (``y_norm``, ddof 1 over training samples, where a fitted decoder uses the
        images' moments); ``feature_std`` is None (the folders do not hold it);
        ``decoder_arrays`` is the root, ``decoder_sidecar`` the description.

    Raises
    ------
    BidsReconError
        The samples' voxel count does not match the description's.
    """
    folders = read_fastl2lir_folders(root, layers=layers, description=description)
    description_file = str(Path(root) / DESCRIPTION_FILE)
    indices, n_voxels = folders.voxel_indices, folders.description["Voxels"]
    # The samples are the mask's voxels; the decoders take all of them, or those at ``indices``.
    if indices is None:
        fits, takes = samples.shape[1] == n_voxels, f"{n_voxels} voxels"
    else:
        mask_voxels = (folders.description.get("VoxelMask") or {}).get("Voxels")
        fits = indices.max() < samples.shape[1] and mask_voxels in (None, samples.shape[1])
        takes = f"{n_voxels} of the voxel mask's {mask_voxels if mask_voxels is not None else 'voxels'}"
    if not fits:
        raise BidsReconError(
            f"The samples hold {samples.shape[1]} voxels; the decoders of {description_file} take {takes}. "
            "Sample the runs in the voxel mask the description names.", EXIT_BAD_ARGUMENTS)
    if indices is not None:
        samples = samples[:, indices]
    items, item_samples = average_test_items(samples, trials)
    decoded, train_mean, train_spread = {}, {}, {}
    recorded = folders.description.get("TrainingSpread") or {}
    for layer, decoder in folders.decoders.items():
        shape = folders.unit_shapes[layer]
        decoded[layer] = decoder.predict(item_samples).reshape((-1, *shape)).astype(np.float32)
        mean = decoder.feature_mean_.reshape(shape)
        train_mean[layer] = mean.astype(np.float32)
        if isinstance(recorded.get(layer), (int, float)):
            train_spread[layer] = float(recorded[layer])
        else:
            train_spread[layer] = spread_from_moments(mean, mean**2 + decoder.feature_std_.reshape(shape) ** 2)
    encoder_layers = [layer for layer in folders.decoders if layer != PIXEL_LAYER]
    return DecodedItems(encoder_layers, items, decoded, train_mean, train_spread, None, str(root), description_file)
