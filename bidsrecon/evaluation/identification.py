"""Pairwise identification: the paper's measure of how well reconstructions match their images.

Two rules make it as robust as bdpy's ``pairwise_identification``:

* every correlation, a reconstruction's with its own image and with the others, comes from the
  same arithmetic (each entry the sum of one elementwise product of normalised items), so two
  identical candidates tie exactly instead of being told apart by rounding; a tie loses, as in
  bdpy;
* value columns that are not finite in some item are left out, and a candidate (true item) or
  reconstruction that is constant over the rest has no correlation: it is dropped with a
  warning, its own score is NaN and it is no candidate for the others.
"""
import re
import warnings

import numpy as np

#: Rows of ``a`` multiplied with all of ``b`` at a time (bounds the elementwise product's memory).
_ROWS_PER_CHUNK = 8


def _normalised_rows(values):
    """Rows centred and scaled to unit norm; NaN rows where a row is constant."""
    centred = values - values.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred * centred).sum(axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


def correlation_matrix(a, b):
    """Pearson correlation of every row of ``a`` with every row of ``b``, by identical arithmetic.

    Parameters
    ----------
    a : ndarray, shape (n, ...)
    b : ndarray, shape (m, ...)
        Each item is flattened; both must have the same number of values per item. Values that
        are not finite in some item of ``a`` or ``b`` are left out of every correlation.

    Returns
    -------
    ndarray, shape (n, m)
        NaN in the rows of constant items of ``a`` and the columns of constant items of ``b``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"items differ in size: {a.shape[1]} vs {b.shape[1]} values")
    finite = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
    if not finite.all():
        warnings.warn(f"{int((~finite).sum())} of {len(finite)} values are NaN or infinite in some "
                      "item; they are left out of the correlations", RuntimeWarning, stacklevel=2)
        a, b = a[:, finite], b[:, finite]
    a, b = _normalised_rows(a), _normalised_rows(b)
    # Not a matrix product: BLAS may round two equal columns differently, which breaks ties.
    corr = np.empty((len(a), len(b)))
    for start in range(0, len(a), _ROWS_PER_CHUNK):
        chunk = a[start:start + _ROWS_PER_CHUNK]
        corr[start:start + len(chunk)] = (chunk[:, None, :] * b[None, :, :]).sum(axis=-1)
    return corr


def valid_items(corr):
    """Items with a defined correlation: neither their reconstruction nor their truth is constant.

    Warns, naming how many were dropped. Returns a boolean mask of shape (n_items,).
    """
    valid = ~np.isnan(corr).all(axis=1) & ~np.isnan(corr).all(axis=0)
    if not valid.all():
        warnings.warn(f"{int((~valid).sum())} of {len(valid)} items are constant (no correlation "
                      "is defined): dropped from pairwise identification", RuntimeWarning, stacklevel=2)
    return valid


def pairwise_identification(reconstructions, truths):
    """Pairwise identification accuracy of each reconstruction (chance 0.5).

    For reconstruction ``i``, the fraction of the other candidates ``j`` of the same set whose
    true image correlates less with it than its own true image does:
    ``mean_j [corr(rec_i, true_j) < corr(rec_i, true_i)]`` (REFERENCE.md §4). Ties lose.

    Parameters
    ----------
    reconstructions, truths : ndarray, shape (n_items, ...)
        Item ``i`` of ``truths`` is the image (or features) that ``reconstructions[i]`` aims at.

    Returns
    -------
    ndarray, shape (n_items,)
        NaN for items dropped as constant (see the module's notes).
    """
    n_items = len(reconstructions)
    if n_items != len(truths):
        raise ValueError(f"{n_items} reconstructions but {len(truths)} true items")
    if n_items < 2:
        raise ValueError("pairwise identification needs at least 2 items")
    corr = correlation_matrix(reconstructions, truths)
    valid = valid_items(corr)
    scores = np.full(n_items, np.nan)
    if valid.sum() < 2:
        return scores
    corr = corr[np.ix_(valid, valid)]
    own = np.diag(corr)
    wins = (corr < own[:, None]).sum(axis=1)  # the diagonal never counts: own < own is False
    scores[valid] = wins / (len(corr) - 1)
    return scores


def pixel_correlation(reconstructions, truths):
    """Pearson correlation of each reconstruction with its own true image (PixCorr); NaN where
    either is constant."""
    a = np.asarray(reconstructions, dtype=np.float64).reshape(len(reconstructions), -1)
    b = np.asarray(truths, dtype=np.float64).reshape(len(truths), -1)
    if a.shape != b.shape:
        raise ValueError(f"reconstructions {a.shape} and truths {b.shape} differ in shape")
    return (_normalised_rows(a) * _normalised_rows(b)).sum(axis=1)


def stimulus_colour(name):
    """The colour a ds001506 shape or letter stimulus is drawn in, from its name; None otherwise.

    ``colorExpStim01_red_square`` gives "red", ``letter_black_img011_A`` "black"; natural images
    (``n01518878_5958``) have none. The name is read as a label only.
    """
    match = re.match(r"^(?:colorExpStim\d+|letter)_([a-z]+)_", str(name))
    return match.group(1) if match else None


def shape_identification(reconstructions, truths, names):
    """Pairwise identification of each shape against the shapes of its own colour only.

    Colour alone identifies a red square among shapes of eight colours; judged only against the
    other red shapes, a reconstruction must show the shape itself (letters are all black, so they
    are judged against each other). Items without a colour (natural images, see
    :func:`stimulus_colour`) or alone in their colour get NaN.

    Parameters
    ----------
    reconstructions, truths : ndarray, shape (n_items, ...)
    names : sequence of str, shape (n_items,)
        Stimulus names of the items.

    Returns
    -------
    ndarray, shape (n_items,)
    """
    colours = np.array([stimulus_colour(name) for name in names], dtype=object)
    scores = np.full(len(colours), np.nan)
    for colour in {c for c in colours if c is not None}:
        index = np.flatnonzero(colours == colour)
        if len(index) > 1:
            scores[index] = pairwise_identification(reconstructions[index], truths[index])
    return scores
