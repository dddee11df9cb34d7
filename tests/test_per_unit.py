"""Tests of the per-unit voxel-selection decoder (the lab's fastl2lir method)."""
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge

from bidsrecon.decoding.per_unit import PerUnitDecoder

REFERENCE = Path(__file__).parent / "data" / "fastl2lir_reference.npz"


def _reference_cases():
    with np.load(REFERENCE) as reference:
        return [(str(name), int(n_voxels), float(alpha)) for name, n_voxels, alpha in
                zip(reference["case_names"], reference["case_n_voxels"], reference["case_alphas"])]


def _problem(n_samples=80, n_voxels=40, n_units=7, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_voxels)) * rng.uniform(0.5, 3, n_voxels) + 10
    Y = X[:, :5] @ rng.standard_normal((5, n_units)) + rng.standard_normal((n_samples, n_units))
    return X, 4 * Y - 1


@pytest.mark.parametrize("name, n_voxels, alpha", _reference_cases())
def test_predictions_match_fastl2lir(name, n_voxels, alpha):
    with np.load(REFERENCE) as reference:
        expected = reference[f"predicted_z_{name}"]
        decoder = PerUnitDecoder(n_voxels=n_voxels, alpha=alpha).fit(reference["X_train"],
                                                                    reference["Y_train"])
        predicted = decoder.predict(reference["X_test"])
    predicted_z = (predicted - decoder.feature_mean_) / decoder.feature_std_
    # The reference predictions vary, so agreement to 1e-4 is not agreement on near-zeros.
    assert expected.std() > 0.2
    assert np.abs(predicted_z - expected).max() <= 1e-4


def test_one_voxel_fewer_no_longer_matches_fastl2lir():
    name, n_voxels, alpha = _reference_cases()[0]
    with np.load(REFERENCE) as reference:
        decoder = PerUnitDecoder(n_voxels=n_voxels - 1, alpha=alpha).fit(reference["X_train"],
                                                                        reference["Y_train"])
        predicted_z = ((decoder.predict(reference["X_test"]) - decoder.feature_mean_)
                       / decoder.feature_std_)
        assert np.abs(predicted_z - reference[f"predicted_z_{name}"]).max() > 1e-3


def test_selects_the_voxels_most_correlated_with_each_unit():
    X, Y = _problem()
    X[:, 7] = 2.5  # constant: its correlation is undefined and it must not be chosen
    decoder = PerUnitDecoder(n_voxels=6, alpha=10.0).fit(X, Y)
    correlations = np.corrcoef(np.delete(X, 7, axis=1).T, Y.T)[:-Y.shape[1], -Y.shape[1]:]
    for unit in range(Y.shape[1]):
        best = np.argsort(-np.abs(correlations[:, unit]))[:6]
        best = np.where(best >= 7, best + 1, best)  # back to columns of X
        assert decoder.selected_voxels_[unit].tolist() == sorted(best.tolist())


def test_each_unit_is_sklearn_ridge_on_its_selected_voxels():
    X, Y = _problem()
    X_test = _problem(n_samples=6, seed=2)[0]
    decoder = PerUnitDecoder(n_voxels=9, alpha=30.0).fit(X, Y)
    predicted = decoder.predict(X_test)
    X_z = (X - X.mean(0)) / X.std(0, ddof=1)
    X_test_z = (X_test - X.mean(0)) / X.std(0, ddof=1)
    Y_z = (Y - Y.mean(0)) / Y.std(0, ddof=1)
    for unit in range(Y.shape[1]):
        voxels = decoder.selected_voxels_[unit]
        # Centred voxels make a penalised and an unpenalised bias equal (both fit Y's mean, 0).
        ridge = Ridge(alpha=30.0).fit(X_z[:, voxels], Y_z[:, unit])
        expected = ridge.predict(X_test_z[:, voxels]) * Y[:, unit].std(ddof=1) + Y[:, unit].mean()
        np.testing.assert_allclose(predicted[:, unit], expected, rtol=1e-9, atol=1e-9)


def test_chunking_does_not_change_the_result():
    X, Y = _problem(n_units=11)
    whole = PerUnitDecoder(n_voxels=8, chunk_size=64).fit(X, Y)
    chunked = PerUnitDecoder(n_voxels=8, chunk_size=3).fit(X, Y)
    np.testing.assert_array_equal(whole.selected_voxels_, chunked.selected_voxels_)
    np.testing.assert_allclose(chunked.predict(X[:5]), whole.predict(X[:5]), rtol=1e-12)


def test_fewer_voxels_than_requested_uses_them_all():
    X, Y = _problem(n_voxels=12)
    decoder = PerUnitDecoder(n_voxels=500).fit(X, Y)
    assert decoder.selected_voxels_.shape == (Y.shape[1], 12)
    assert decoder.predict(X[:3]).shape == (3, Y.shape[1])


@pytest.mark.parametrize("parameters, message", [
    ({"n_voxels": 0}, "n_voxels must be a positive integer; got 0"),
    ({"n_voxels": 2.5}, "n_voxels must be a positive integer"),
    ({"alpha": 0.0}, "alpha must be a positive finite number; got 0.0"),
    ({"alpha": float("nan")}, "alpha must be a positive finite number"),
    ({"chunk_size": True}, "chunk_size must be a positive integer"),
])
def test_bad_parameters_are_refused(parameters, message):
    X, Y = _problem()
    with pytest.raises(ValueError, match=message):
        PerUnitDecoder(**parameters).fit(X, Y)


def test_bad_inputs_are_refused():
    X, Y = _problem()
    with pytest.raises(ValueError, match="X has 80 samples but Y has 79 rows"):
        PerUnitDecoder().fit(X, Y[:-1])
    X_nan = X.copy()
    X_nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="X holds NaN"):
        PerUnitDecoder().fit(X_nan, Y)
    with pytest.raises(ValueError, match="Y must be 2-D"):
        PerUnitDecoder().fit(X, Y[:, 0])
    with pytest.raises(NotFittedError):
        PerUnitDecoder().predict(X)
    decoder = PerUnitDecoder(n_voxels=5).fit(X, Y)
    with pytest.raises(ValueError, match="X has 39 voxels; the decoder was fitted on 40"):
        decoder.predict(X[:, 1:])
