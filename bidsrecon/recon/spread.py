"""The spread of a layer's features, as the decoded-feature correction uses it.

Ridge regression and trial averaging shrink decoded features towards the training mean. Before
inverting them, each layer is rescaled so that its spread around the training mean matches the
spread of true training features (the Kamitani lab's default correction; REFERENCE.md §1).

Spread is measured the same way on both sides:

* convolutional layers (``(C, H, W)`` per image): the root-mean-square deviation from the
  training mean over the spatial positions of each channel, averaged over channels;
* vector layers (``(U,)`` per image): the root-mean-square deviation over all units.
"""
import numpy as np


def _mean_channel_rms(mean_square):
    """RMS over positions per channel, averaged over channels (conv); RMS over units (vector)."""
    if mean_square.ndim == 3:
        return np.sqrt(mean_square.mean(axis=(1, 2))).mean()
    return np.sqrt(mean_square.mean())


def spread_from_moments(unit_mean, unit_mean_square):
    """Spread of true features from per-unit moments over the training images.

    Parameters
    ----------
    unit_mean, unit_mean_square : ndarray, shape (C, H, W) or (U,)
        Mean and mean of squares of each unit over the training images.

    Returns
    -------
    float
    """
    unit_mean = np.asarray(unit_mean, dtype=np.float64)
    variance = np.maximum(np.asarray(unit_mean_square, dtype=np.float64) - unit_mean**2, 0.0)
    return float(_mean_channel_rms(variance))


def item_spread(centred):
    """Spread of each item of ``centred`` (features minus the training mean).

    Parameters
    ----------
    centred : ndarray, shape (n_items, C, H, W) or (n_items, U)

    Returns
    -------
    ndarray, shape (n_items,)
    """
    centred = np.asarray(centred, dtype=np.float64)
    squared = centred**2
    if centred.ndim == 4:
        return np.sqrt(squared.mean(axis=(-2, -1))).mean(axis=-1)
    return np.sqrt(squared.reshape(len(centred), -1).mean(axis=-1))
