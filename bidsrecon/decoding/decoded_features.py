"""Decoded features on disk: one HDF5 file per participant, the product other reconstruction
methods can take.

:func:`save_decoded_features` writes one dataset per layer under ``/features`` and the items'
table under ``/items``; :func:`load_decoded_features` reads them back.
"""
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError

_FEATURES_FORMAT_NAME = "bidsrecon-decoded-features"


def save_decoded_features(path, decoded, items, *, metadata=None):
    """Write decoded features to HDF5: one dataset per layer, plus the table of items.

    Layout: ``/features/<layer>`` float32 ``(n_items, *layer_shape)``; ``/items/<column>`` one
    1-D dataset per column of ``items`` (strings as UTF-8); root attributes ``format``,
    ``layers`` (JSON list, the layers' order), ``item_columns`` (JSON list) and ``metadata``
    (JSON object).

    Parameters
    ----------
    path : str or Path
        Output file (``.h5``); parent folders are created.
    decoded : dict of str to ndarray, shape (n_items, ...)
        Decoded features per layer, rows in the order of ``items``.
    items : pandas.DataFrame
        One row per decoded item, with at least the columns ``set`` and ``stimulus``.
    metadata : dict, optional
        JSON-serialisable description (encoder, layers, software version ...).

    Returns
    -------
    Path
    """
    layers, columns = _check_decoded_features(decoded, items)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as store:
        store.attrs["format"] = _FEATURES_FORMAT_NAME
        store.attrs["layers"] = json.dumps(layers)
        store.attrs["item_columns"] = json.dumps(columns)
        store.attrs["metadata"] = json.dumps(metadata or {})
        for layer in layers:
            store.create_dataset(f"features/{layer}",
                                 data=np.asarray(decoded[layer], dtype=np.float32))
        for column in columns:
            values = items[column]
            if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                store.create_dataset(f"items/{column}", data=values.to_numpy())
            else:
                store.create_dataset(f"items/{column}", data=values.astype(str).to_list(),
                                     dtype=h5py.string_dtype("utf-8"))
    return path


def load_decoded_features(path, layers=None):
    """Read a file written by :func:`save_decoded_features`.

    Parameters
    ----------
    path : str or Path
    layers : list of str, optional
        Layers to read (all by default).

    Returns
    -------
    decoded : dict of str to ndarray, shape (n_items, ...) float32
        In the file's layer order (or the order of ``layers``).
    items : pandas.DataFrame
    metadata : dict

    Raises
    ------
    BidsReconError
        File missing (exit 66), not a decoded-features file, or without a requested layer
        (exit 64).
    """
    path = Path(path)
    if not path.is_file():
        raise BidsReconError(f"Decoded-features file {path} not found.", EXIT_INPUT_MISSING)
    with h5py.File(path, "r") as store:
        if store.attrs.get("format") != _FEATURES_FORMAT_NAME:
            raise BidsReconError(f"{path} is not a decoded-features file written by bidsrecon.",
                                 EXIT_BAD_ARGUMENTS)
        stored_layers = json.loads(store.attrs["layers"])
        layers = stored_layers if layers is None else list(layers)
        absent = [layer for layer in layers if layer not in stored_layers]
        if absent:
            raise BidsReconError(f"{path} holds no layers {absent}; it has {stored_layers}.",
                                 EXIT_BAD_ARGUMENTS)
        decoded = {layer: store[f"features/{layer}"][()] for layer in layers}
        columns = {}
        for column in json.loads(store.attrs["item_columns"]):
            dataset = store[f"items/{column}"]
            is_text = h5py.check_string_dtype(dataset.dtype) is not None
            columns[column] = dataset.asstr()[()] if is_text else dataset[()]
        metadata = json.loads(store.attrs["metadata"])
    return decoded, pd.DataFrame(columns), metadata


def _check_decoded_features(decoded, items):
    if not isinstance(decoded, dict) or not decoded:
        raise ValueError("decoded must be a non-empty dict of layer name to an array "
                         "(n_items, ...).")
    if not isinstance(items, pd.DataFrame) or not {"set", "stimulus"} <= set(items.columns):
        raise ValueError("items must be a DataFrame with the columns 'set' and 'stimulus'.")
    layers = [str(layer) for layer in decoded]
    columns = [str(column) for column in items.columns]
    # A slash would make a nested HDF5 group rather than a dataset of that name.
    slashed = [name for name in layers + columns if "/" in name]
    if slashed:
        raise ValueError(f"Layer and item column names may not contain '/'; got {slashed}.")
    rows = {layer: np.shape(value)[0] if np.ndim(value) else None
            for layer, value in decoded.items()}
    if any(n_rows != len(items) for n_rows in rows.values()):
        raise ValueError(f"Every layer of decoded needs one row per item ({len(items)} items); "
                         f"got rows {rows}.")
    return layers, columns
