"""Decoding accuracy of each layer: profile and pattern correlation (REFERENCE.md §4).

- **Profile correlation**: for each unit, the Pearson correlation between its decoded and true
  values across the items; averaged over units. Units constant across the items (in the decoded
  or the true features) have no correlation and are skipped.
- **Pattern correlation**: for each item, the Pearson correlation between its decoded and true
  features across the units, after z-scoring every unit with the training features' mean and SD
  (so units with large means or spreads do not dominate); averaged over items.

Layers can hold millions of units, so both are computed in float64 a slice at a time, never on
a float64 copy of a whole layer.
"""
import numpy as np
import pandas as pd

from bidsrecon.features.correlation import profile_correlation

#: Units per slice of the profile correlation: (n_items × this) float64 values at a time.
_UNITS_PER_SLICE = 1 << 16

#: Columns of :func:`decoding_accuracy`'s table, in order.
ACCURACY_COLUMNS = ("layer", "n_items", "n_units", "profile_correlation", "profile_units_scored",
                    "pattern_correlation", "pattern_items_scored")


def decoding_accuracy(decoded, true, train_mean=None, train_std=None):
    """Profile and pattern correlation of every layer, as a table ready for a TSV.

    Parameters
    ----------
    decoded : dict of str to ndarray, shape (n_items, *layer_shape)
        Decoded features per layer.
    true : dict of str to ndarray, shape (n_items, *layer_shape)
        True features of the same items, with at least the layers of ``decoded``.
    train_mean : dict of str to array-like, optional
        Per layer, the training features' mean, broadcastable to ``layer_shape``; subtracted
        before the pattern correlation.
    train_std : dict of str to array-like, optional
        Per layer, the training features' SD, broadcastable to ``layer_shape``; divides before
        the pattern correlation. Units whose SD is 0 are left out of it.

    Returns
    -------
    pandas.DataFrame
        One row per layer (in ``decoded``'s order) with the columns :data:`ACCURACY_COLUMNS`:
        the means over scored units / items, and how many were scored (NaN means when none).
    """
    rows = []
    for layer, layer_decoded in decoded.items():
        if layer not in true:
            raise ValueError(f"true has no layer {layer!r}; it has {list(true)}.")
        if np.shape(layer_decoded) != np.shape(true[layer]):
            raise ValueError(f"Layer {layer!r}: decoded features have shape "
                             f"{np.shape(layer_decoded)}, true ones {np.shape(true[layer])}.")
        profiles = profile_correlations(layer_decoded, true[layer])
        patterns = pattern_correlations(
            layer_decoded, true[layer],
            train_mean=None if train_mean is None else train_mean[layer],
            train_std=None if train_std is None else train_std[layer])
        rows.append({
            "layer": layer,
            "n_items": len(patterns),
            "n_units": profiles.size,
            "profile_correlation": _nan_mean(profiles),
            "profile_units_scored": int(np.count_nonzero(~np.isnan(profiles))),
            "pattern_correlation": _nan_mean(patterns),
            "pattern_items_scored": int(np.count_nonzero(~np.isnan(patterns))),
        })
    return pd.DataFrame(rows, columns=list(ACCURACY_COLUMNS))


def profile_correlations(decoded, true):
    """Correlation of each unit's decoded and true values across items.

    Parameters
    ----------
    decoded, true : ndarray, shape (n_items, ...)

    Returns
    -------
    ndarray, shape (n_units,)
        NaN for units constant across the items on either side (and for every unit when there
        are fewer than two items).
    """
    decoded, true = _check_pair(decoded, true)
    decoded = decoded.reshape(len(decoded), -1)
    true = true.reshape(len(true), -1)
    correlations = np.full(decoded.shape[1], np.nan)
    for start in range(0, decoded.shape[1], _UNITS_PER_SLICE):
        units = slice(start, start + _UNITS_PER_SLICE)
        decoded_slice = decoded[:, units].astype(np.float64)
        true_slice = true[:, units].astype(np.float64)
        # Tested on the raw values: the mean of equal floats can differ from them by rounding,
        # which would leave a constant unit a tiny non-zero spread and a meaningless correlation.
        constant = (np.ptp(decoded_slice, axis=0) == 0) | (np.ptp(true_slice, axis=0) == 0)
        slice_correlations = profile_correlation(decoded_slice, true_slice)
        slice_correlations[constant] = np.nan
        correlations[units] = slice_correlations
    return correlations


def pattern_correlations(decoded, true, train_mean=None, train_std=None):
    """Correlation of each item's decoded and true features across units, z-scored.

    Parameters
    ----------
    decoded, true : ndarray, shape (n_items, *layer_shape)
    train_mean, train_std : array-like, optional
        Training features' mean and SD, broadcastable to ``layer_shape``. Units whose SD is 0
        are left out.

    Returns
    -------
    ndarray, shape (n_items,)
        NaN for items whose z-scored features are constant on either side.
    """
    decoded, true = _check_pair(decoded, true)
    layer_shape = decoded.shape[1:]
    mean = 0.0 if train_mean is None else _broadcast_unit_statistic(train_mean, layer_shape,
                                                                     "train_mean")
    if train_std is None:
        std, kept = 1.0, slice(None)
    else:
        std = _broadcast_unit_statistic(train_std, layer_shape, "train_std")
        kept = std != 0
        mean = mean[kept] if np.ndim(mean) else mean
        std = std[kept]
    correlations = np.full(len(decoded), np.nan)
    # One item at a time: a float64 copy of one item's layer, not of the whole layer.
    for item in range(len(decoded)):
        decoded_item = (decoded[item].reshape(-1)[kept].astype(np.float64) - mean) / std
        true_item = (true[item].reshape(-1)[kept].astype(np.float64) - mean) / std
        if decoded_item.size < 2 or np.ptp(decoded_item) == 0 or np.ptp(true_item) == 0:
            continue
        correlations[item] = np.corrcoef(decoded_item, true_item)[0, 1]
    return correlations


def _broadcast_unit_statistic(statistic, layer_shape, name):
    """A per-unit statistic as a flat float64 array over the layer's units."""
    statistic = np.asarray(statistic, dtype=np.float64)
    try:
        statistic = np.broadcast_to(statistic, layer_shape)
    except ValueError:
        raise ValueError(f"{name} of shape {statistic.shape} does not broadcast to the layer's "
                         f"unit shape {layer_shape}.") from None
    if not np.all(np.isfinite(statistic)):
        raise ValueError(f"{name} holds NaN or infinite values.")
    return statistic.reshape(-1)


def _check_pair(decoded, true):
    decoded, true = np.asarray(decoded), np.asarray(true)
    if decoded.shape != true.shape or decoded.ndim < 2:
        raise ValueError("decoded and true features must share a shape (n_items, ...); got "
                         f"{decoded.shape} and {true.shape}.")
    if not (np.all(np.isfinite(decoded)) and np.all(np.isfinite(true))):
        raise ValueError("The decoded or true features hold NaN or infinite values.")
    return decoded, true


def _nan_mean(values):
    scored = values[~np.isnan(values)]
    return float(scored.mean()) if scored.size else float("nan")
