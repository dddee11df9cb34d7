"""Turn a cleaned run into one sample per stimulus block."""
import numpy as np

from bidsrecon.paper import DELAY_SECONDS


def block_weights(n_volumes, tr, onsets, durations, delay=DELAY_SECONDS):
    """Weights of each volume in each block's sample.

    Volume ``v`` is taken to cover the interval ``[v * tr, (v + 1) * tr)``. A block's window is
    its event shifted by the haemodynamic ``delay``: ``[onset + delay, onset + duration + delay)``.
    Each volume is weighted by the fraction of the window it covers, so blocks that do not start
    on a volume boundary, or last a fractional number of volumes, are averaged exactly.

    Parameters
    ----------
    n_volumes : int
    tr : float
        Repetition time in seconds.
    onsets, durations : array-like, shape (n_blocks,)
        Seconds from the start of the run.
    delay : float
        Haemodynamic delay in seconds (the paper: 4 s).

    Returns
    -------
    ndarray, shape (n_blocks, n_volumes); each row sums to 1.
    """
    onsets = np.asarray(onsets, dtype=np.float64)
    durations = np.asarray(durations, dtype=np.float64)
    if np.any(durations <= 0):
        raise ValueError("block durations must be positive")
    starts = onsets + delay
    ends = starts + durations
    volume_starts = np.arange(n_volumes) * tr
    volume_ends = volume_starts + tr
    overlap = np.clip(
        np.minimum(ends[:, None], volume_ends[None, :]) - np.maximum(starts[:, None], volume_starts[None, :]),
        0.0,
        None,
    )
    covered = overlap.sum(axis=1)
    short = np.flatnonzero(covered < durations - 1e-6)
    if short.size:
        first = short[0]
        raise ValueError(
            f"block at onset {onsets[first]:g} s (+{delay:g} s delay) runs past the end of the run "
            f"({n_volumes} volumes x {tr:g} s = {n_volumes * tr:g} s)"
        )
    return overlap / covered[:, None]


def block_samples(data, tr, onsets, durations, delay=DELAY_SECONDS):
    """Average a cleaned run over each block's delayed window (see `block_weights`).

    Parameters
    ----------
    data : ndarray, shape (n_volumes, n_voxels)
        Output of `bidsrecon.preproc.signal.clean_run`; NaN volumes (discarded) must not fall
        inside any block's window.
    tr, onsets, durations, delay
        As in `block_weights`.

    Returns
    -------
    ndarray, shape (n_blocks, n_voxels), float32
    """
    weights = block_weights(data.shape[0], tr, onsets, durations, delay)
    used = weights.sum(axis=0) > 0
    if np.isnan(data[used]).any():
        raise ValueError("a block's window includes discarded volumes; reduce the discarded seconds")
    return (weights[:, used] @ data[used]).astype(np.float32)
