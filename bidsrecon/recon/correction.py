"""The Kamitani lab's correction of decoded features before they are inverted."""
import numpy as np

from bidsrecon.recon.spread import item_spread


def correct_spread(decoded, train_mean, train_spread):
    """Rescale each item's decoded layer to the spread of true features around the training mean.

    Ridge regression and trial averaging shrink decoded features towards the training mean. Per
    item and layer: ``train_mean + (d - train_mean) * train_spread / item_spread(d - train_mean)``
    (spread as :mod:`bidsrecon.recon.spread` defines it). An item equal to the training mean
    has no spread to rescale and is returned as the mean.

    Parameters
    ----------
    decoded : dict of str to ndarray, each of shape (n_items, ...)
        Decoded features by layer.
    train_mean : dict of str to ndarray, each of shape (...)
        Mean of the training features by layer (one item's shape).
    train_spread : dict of str to float
        Spread of the true training features by layer
        (:func:`bidsrecon.recon.spread.spread_from_moments`).

    Returns
    -------
    dict of str to ndarray, float32
        Corrected features, same keys and shapes as ``decoded``.
    """
    missing = sorted(set(decoded) - set(train_mean) | set(decoded) - set(train_spread))
    if missing:
        raise ValueError(f"No training mean or spread for layer(s) {missing}.")
    corrected = {}
    for name, features in decoded.items():
        features = np.asarray(features, dtype=np.float64)
        mean = np.asarray(train_mean[name], dtype=np.float64)
        if features.shape[1:] != mean.shape:
            raise ValueError(f"Layer {name!r}: decoded items have shape {features.shape[1:]}, "
                             f"the training mean {mean.shape}.")
        centred = features - mean
        spread = item_spread(centred)
        scale = np.divide(float(train_spread[name]), spread, out=np.zeros_like(spread),
                          where=spread > 0)
        scale = scale.reshape((-1,) + (1,) * (features.ndim - 1))
        corrected[name] = (mean + centred * scale).astype(np.float32)
    return corrected
