"""Pairwise identification: the paper's measure of how well reconstructions match their images."""
import numpy as np


def correlation_matrix(a, b):
    """Pearson correlation of every row of ``a`` with every row of ``b``.

    Parameters
    ----------
    a : ndarray, shape (n, ...)
    b : ndarray, shape (m, ...)
        Each item is flattened; both must have the same number of values per item.

    Returns
    -------
    ndarray, shape (n, m)
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"items differ in size: {a.shape[1]} vs {b.shape[1]} values")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    a_norm = np.linalg.norm(a, axis=1, keepdims=True)
    b_norm = np.linalg.norm(b, axis=1, keepdims=True)
    # A constant item has no defined correlation: count it as 0 rather than NaN.
    a_norm[a_norm == 0] = np.inf
    b_norm[b_norm == 0] = np.inf
    return (a / a_norm) @ (b / b_norm).T


def pairwise_identification(reconstructions, truths):
    """Pairwise identification accuracy of each reconstruction (chance 0.5).

    For reconstruction ``i``, the fraction of the other candidates ``j`` of the same set whose
    true image correlates less with it than its own true image does:
    ``mean_j [corr(rec_i, true_j) < corr(rec_i, true_i)]`` (REFERENCE.md §4).

    Parameters
    ----------
    reconstructions, truths : ndarray, shape (n_items, ...)
        Item ``i`` of ``truths`` is the image (or features) that ``reconstructions[i]`` aims at.

    Returns
    -------
    ndarray, shape (n_items,)
    """
    n_items = len(reconstructions)
    if n_items != len(truths):
        raise ValueError(f"{n_items} reconstructions but {len(truths)} true items")
    if n_items < 2:
        raise ValueError("pairwise identification needs at least 2 items")
    corr = correlation_matrix(reconstructions, truths)
    own = np.diag(corr)
    wins = (corr < own[:, None]).sum(axis=1)  # the diagonal never counts: own < own is False
    return wins / (n_items - 1)


def pixel_correlation(reconstructions, truths):
    """Pearson correlation of each reconstruction with its own true image (PixCorr)."""
    return np.diag(correlation_matrix(reconstructions, truths))
