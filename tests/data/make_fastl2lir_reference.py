"""Make ``fastl2lir_reference.npz``: predictions of the lab's ``fastl2lir`` on a small problem.

``tests/test_per_unit.py`` checks that :class:`bidsrecon.decoding.per_unit.PerUnitDecoder`
reproduces them. ``fastl2lir`` 0.11 fails under numpy 2 whenever it selects voxels
(REFERENCE.md §8) and is not a dependency of bidsrecon, so this script runs in a separate
environment; it was run as::

    python3 -m venv /tmp/fl2l_venv
    /tmp/fl2l_venv/bin/pip install "numpy<2" fastl2lir==0.11   # numpy 1.26.4 was installed
    /tmp/fl2l_venv/bin/python tests/data/make_fastl2lir_reference.py

The problem: 48 training samples and 4 test items over 24 voxels (one of them constant), 5 units
driven by a few voxels each plus noise. The data are z-scored with the training mean and SD
(ddof 1, constant voxels divided by 1) the way the lab does before calling fastl2lir; the stored
predictions are fastl2lir's, in z-scored feature units, for each case of ``CASES``. Inputs are
stored as float32 (exactly what was fed, after casting to float64) to keep the file small.
"""
from pathlib import Path

import numpy as np
from fastl2lir import FastL2LiR

N_TRAIN, N_TEST, N_VOXELS, N_UNITS = 48, 4, 24, 5
#: (name, voxels kept per unit, alpha); keeping all 24 voxels takes fastl2lir's unselected path.
CASES = (("select8_alpha100", 8, 100.0), ("select8_alpha1", 8, 1.0), ("all_alpha10", 24, 10.0))


def zscore_with(data, mean, std):
    return (data - mean) / std


def training_statistics(data):
    std = data.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    return data.mean(axis=0), std


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    X_train = rng.standard_normal((N_TRAIN, N_VOXELS)).astype(np.float32)
    X_test = rng.standard_normal((N_TEST, N_VOXELS)).astype(np.float32)
    X_train[:, 5] = 3.0  # a constant voxel: fastl2lir must never select it
    X_test[:, 5] = 3.0
    weights = np.zeros((N_VOXELS, N_UNITS), np.float32)
    for unit in range(N_UNITS):
        weights[rng.choice(N_VOXELS, size=4, replace=False), unit] = rng.normal(0, 1, size=4)
    noise = rng.standard_normal((N_TRAIN, N_UNITS)).astype(np.float32)
    Y_train = (X_train @ weights + 0.5 * noise + 2.0).astype(np.float32)
    return X_train, X_test, Y_train


def main():
    X_train, X_test, Y_train = make_problem()
    voxel_mean, voxel_std = training_statistics(X_train.astype(np.float64))
    feature_mean, feature_std = training_statistics(Y_train.astype(np.float64))
    X_train_z = zscore_with(X_train.astype(np.float64), voxel_mean, voxel_std)
    X_test_z = zscore_with(X_test.astype(np.float64), voxel_mean, voxel_std)
    Y_train_z = zscore_with(Y_train.astype(np.float64), feature_mean, feature_std)
    predictions = {}
    for name, n_feat, alpha in CASES:
        model = FastL2LiR()
        # fastl2lir divides by the constant voxel's zero SD before zeroing its correlation.
        with np.errstate(divide="ignore", invalid="ignore"):
            model.fit(X_train_z, Y_train_z, alpha=alpha, n_feat=n_feat)
        predictions[f"predicted_z_{name}"] = model.predict(X_test_z)
    output = Path(__file__).with_name("fastl2lir_reference.npz")
    np.savez_compressed(
        output, X_train=X_train, X_test=X_test, Y_train=Y_train,
        case_names=np.array([name for name, _, _ in CASES]),
        case_n_voxels=np.array([n_feat for _, n_feat, _ in CASES]),
        case_alphas=np.array([alpha for _, _, alpha in CASES]),
        fastl2lir_version=np.array("0.11"), numpy_version=np.array(np.__version__),
        **predictions)
    print(f"wrote {output} ({output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
