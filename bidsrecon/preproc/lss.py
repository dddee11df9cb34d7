"""A beta per trial by least-squares-separate GLMs (LSS; Mumford, Turner, Ashby & Poldrack 2012).

For trial ``i`` LSS fits its own GLM with two event regressors, that trial's and one for all
the other trials together, plus the nuisance regressors, and keeps the trial's beta. Fitting
one GLM per trial and voxel is what makes LSS slow in most tools; here every GLM is solved at
once for all voxels:

- the nuisance regressors are projected out of the trial regressors (Frisch–Waugh–Lovell: the
  trial's beta is unchanged when nuisance is removed from both sides, and `clean_run` already
  removed it from the data);
- with ``r_i`` the trial's regressor and ``s`` the sum of all trial regressors, the other
  trials' regressor is ``s - r_i``; every inner product the GLMs need follows from ``R.T @ Y``
  (one matrix product for all trials and voxels) and the trial regressors' own inner products;
- each trial's 2×2 normal equations are solved for all voxels together.
"""
import numpy as np
import pandas as pd


def trial_regressors(n_volumes, tr, onsets, durations):
    """One HRF-convolved regressor per trial (nilearn's design tools, Glover HRF).

    Volume ``v`` is taken at ``(v + 0.5) * tr``: the middle of the interval ``[v * tr,
    (v + 1) * tr)`` that `bidsrecon.preproc.samples.block_weights` gives it, and the time
    that slice-timing correction aligns slices to.

    Parameters
    ----------
    n_volumes : int
    tr : float
    onsets, durations : array-like, shape (n_trials,)
        Seconds from the start of the run.

    Returns
    -------
    ndarray, shape (n_volumes, n_trials)
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    late = np.flatnonzero(np.asarray(onsets, dtype=np.float64) >= n_volumes * tr)
    if late.size:
        raise ValueError(f"the trial at onset {onsets[late[0]]:g} s starts after the run ends "
                         f"({n_volumes} volumes x {tr:g} s)")
    names = [f"trial{index:05d}" for index in range(len(onsets))]
    events = pd.DataFrame({"onset": np.asarray(onsets, dtype=np.float64),
                           "duration": np.asarray(durations, dtype=np.float64), "trial_type": names})
    frame_times = (np.arange(n_volumes) + 0.5) * tr
    design = make_first_level_design_matrix(frame_times, events, hrf_model="glover", drift_model=None)
    return design[names].to_numpy()


def lss_betas(data, regressors, nuisance):
    """Least-squares-separate beta of every trial in every voxel.

    Parameters
    ----------
    data : ndarray, shape (n_volumes, n_voxels)
        Only the volumes to fit, with ``nuisance`` already regressed out (`clean_run`'s kept
        volumes); the betas are then in the units of ``data`` per unit of regressor.
    regressors : ndarray, shape (n_volumes, n_trials)
        From `trial_regressors`, the same volumes.
    nuisance : ndarray, shape (n_volumes, n_nuisance)
        The regressors removed from ``data`` (`bidsrecon.preproc.signal.nuisance_design`).

    Returns
    -------
    ndarray, shape (n_trials, n_voxels), float32
    """
    trials = np.asarray(regressors, dtype=np.float64)
    trials = trials - nuisance @ (np.linalg.pinv(nuisance) @ trials)
    own = (trials * trials).sum(axis=0)
    # A trial long over before the fitted volumes leaves only a rounding-level HRF tail.
    silent = np.flatnonzero(own <= 1e-6 * np.median(own))
    if silent.size:
        raise ValueError(f"trial {silent[0]} has no response left in the fitted volumes "
                         "(it ends before them or starts after the run)")
    total = trials.sum(axis=1)
    own_with_total = trials.T @ total
    # Inner products of [r_i, s - r_i] with themselves: the 2x2 normal matrix of each trial.
    cross = own_with_total - own
    others = total @ total - 2.0 * own_with_total + own
    normal = np.stack([np.stack([own, cross], axis=-1), np.stack([cross, others], axis=-1)], axis=-2)
    # pinv, not inv: with a single trial (or trials that always co-occur) "the others" is empty.
    first_row = np.linalg.pinv(normal)[:, 0, :]
    # r_i . y for every trial and voxel, in float32: a float64 copy of a full-size run's data
    # would cost half a gigabyte, for no precision that z-scored data can use.
    trial_data = (trials.T.astype(np.float32) @ np.asarray(data, dtype=np.float32)).astype(np.float64)
    others_data = trial_data.sum(axis=0) - trial_data  # (s - r_i) . y
    return (first_row[:, :1] * trial_data + first_row[:, 1:] * others_data).astype(np.float32)
