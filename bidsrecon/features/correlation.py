"""How decoded features correlate with true ones, unit by unit across images."""
import numpy as np


def profile_correlation(predicted, true):
    """Pearson correlation of each unit across images (NaN where either side is constant).

    Parameters
    ----------
    predicted, true : ndarray, shape (n_images, n_units)

    Returns
    -------
    ndarray, shape (n_units,)
    """
    predicted = predicted - predicted.mean(axis=0)
    true = true - true.mean(axis=0)
    norms = np.sqrt((predicted**2).sum(axis=0) * (true**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = (predicted * true).sum(axis=0) / norms
    correlations[norms == 0] = np.nan
    return correlations
