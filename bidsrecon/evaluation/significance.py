"""Is a set's pairwise identification better than chance? A permutation test.

The null hypothesis: reconstructions carry no information about which image they belong to.
Under it, any assignment of the true images to the reconstructions is as likely as the real
one, so the accuracy of the real assignment is compared with those of random reassignments
(a randomisation test; Nichols & Holmes 2002, *Nonparametric permutation tests for functional
neuroimaging*, Hum Brain Mapp 15(1): 1-25). The p-value counts the observed assignment as one
of the permutations, ``(1 + #{null >= observed}) / (1 + n_permutations)``, so it is never 0
(Phipson & Smyth 2010, *Permutation p-values should never be zero*, Stat Appl Genet Mol Biol
9(1): 39).
"""
import numpy as np

from bidsrecon.evaluation.identification import correlation_matrix, valid_items


def identification_permutation_test(recons, truths, n_permutations=1000, seed=0, similarity=None):
    """Mean pairwise identification accuracy of a set and its permutation p-value.

    Parameters
    ----------
    recons, truths : ndarray, shape (n_items, ...)
        Item ``i`` of ``truths`` is what ``recons[i]`` aims at (images or features).
    n_permutations : int, default=1000
        Random reassignments of the true items to the reconstructions.
    seed : int, default=0
        Seed of the permutations: the same inputs and seed give the same p-value.
    similarity : callable, optional
        ``similarity(recons, truths)`` returning the (n_items, n_items) matrix whose entry
        ``[i, j]`` says how much ``recons[i]`` resembles ``truths[j]`` (larger is more alike).
        Pearson correlation of the flattened items by default, as in
        :func:`bidsrecon.evaluation.identification.pairwise_identification`.

    Returns
    -------
    observed : float
        Mean over items of the pairwise identification accuracy (chance 0.5).
    p_value : float
        In ``[1 / (1 + n_permutations), 1]``.

    Notes
    -----
    The similarity matrix is computed once: reassigning the true items permutes its columns.
    Under a permutation ``pi`` the candidates of reconstruction ``i`` are still all the true
    items, only its own becomes ``pi(i)``; so its accuracy is the number of entries of row
    ``i`` below ``[i, pi(i)]``, divided by ``n_items - 1``. Those counts are ranked once per
    row, and each permutation costs one gather.
    """
    n_items = len(recons)
    if n_items != len(truths):
        raise ValueError(f"{n_items} reconstructions but {len(truths)} true items")
    if n_items < 2:
        raise ValueError("pairwise identification needs at least 2 items")
    if isinstance(n_permutations, bool) or not isinstance(n_permutations, (int, np.integer)) \
            or n_permutations < 1:
        raise ValueError(f"n_permutations must be a whole number >= 1; got {n_permutations!r}")
    matrix = np.asarray((similarity or correlation_matrix)(recons, truths), dtype=np.float64)
    if matrix.shape != (n_items, n_items):
        raise ValueError(f"similarity returned shape {matrix.shape}; expected ({n_items}, {n_items})")
    # Constant items have no correlation: dropped, as pairwise_identification drops them.
    valid = valid_items(matrix)
    matrix, n_items = matrix[np.ix_(valid, valid)], int(valid.sum())
    if n_items < 2:
        return np.nan, np.nan
    # below[i, k]: entries of row i strictly below matrix[i, k] (ties count as losses, as in
    # pairwise_identification).
    below = np.stack([np.searchsorted(np.sort(row), row, side="left") for row in matrix])
    rows = np.arange(n_items)
    # Sums of integer counts: observed and null statistics compare exactly, without rounding.
    observed_wins = int(below[rows, rows].sum())
    rng = np.random.default_rng(seed)
    permutations = rng.permuted(np.broadcast_to(rows, (int(n_permutations), n_items)), axis=1)
    null_wins = below[rows[None, :], permutations].sum(axis=1)
    p_value = (1 + int((null_wins >= observed_wins).sum())) / (1 + int(n_permutations))
    return observed_wins / (n_items * (n_items - 1)), p_value
