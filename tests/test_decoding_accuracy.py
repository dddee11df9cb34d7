"""Tests of the per-layer decoding accuracy: profile and pattern correlation."""
import io

import numpy as np
import pandas as pd
import pytest

from bidsrecon.evaluation import decoding_accuracy as accuracy_module
from bidsrecon.evaluation.decoding_accuracy import (
    ACCURACY_COLUMNS,
    decoding_accuracy,
    pattern_correlations,
    profile_correlations,
)


def _features(seed=0, n_items=40):
    rng = np.random.default_rng(seed)
    return {"conv": rng.standard_normal((n_items, 3, 4, 4)).astype(np.float32),
            "fc": rng.standard_normal((n_items, 50)).astype(np.float32)}


def test_perfect_decoding_scores_one():
    true = _features()
    table = decoding_accuracy(true, true)
    assert list(table.columns) == list(ACCURACY_COLUMNS)
    assert table["layer"].tolist() == ["conv", "fc"]
    np.testing.assert_allclose(table["profile_correlation"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(table["pattern_correlation"], 1.0, rtol=1e-6)
    assert table["n_units"].tolist() == [48, 50]
    assert table["profile_units_scored"].tolist() == [48, 50]
    assert table["pattern_items_scored"].tolist() == [40, 40]


def test_profile_correlation_ignores_each_units_scale_and_offset():
    true = _features()["fc"]
    rng = np.random.default_rng(1)
    rescaled = true * rng.uniform(0.1, 10, size=50) + rng.uniform(-100, 100, size=50)
    np.testing.assert_allclose(profile_correlations(rescaled, true), 1.0, rtol=1e-6)


def test_shuffled_items_score_about_zero():
    true = _features(n_items=400)
    shuffled = {layer: value[np.random.default_rng(2).permutation(len(value))]
                for layer, value in true.items()}
    table = decoding_accuracy(shuffled, true)
    assert np.all(np.abs(table["profile_correlation"]) < 0.03)
    assert np.all(np.abs(table["pattern_correlation"]) < 0.03)


def test_constant_unit_is_skipped():
    rng = np.random.default_rng(3)
    true = rng.standard_normal((30, 6))
    decoded = true + rng.standard_normal((30, 6))
    true[:, 2] = 0.1  # a unit that never varies: its mean differs from 0.1 by rounding
    correlations = profile_correlations(decoded, true)
    assert np.isnan(correlations[2])
    expected = [np.corrcoef(decoded[:, unit], true[:, unit])[0, 1] for unit in (0, 1, 3, 4, 5)]
    np.testing.assert_allclose(correlations[[0, 1, 3, 4, 5]], expected, rtol=1e-12)
    table = decoding_accuracy({"fc": decoded}, {"fc": true})
    assert table.loc[0, "profile_units_scored"] == 5
    assert table.loc[0, "profile_correlation"] == pytest.approx(np.mean(expected), rel=1e-12)


def test_pattern_correlation_z_scores_with_the_training_statistics():
    rng = np.random.default_rng(4)
    train_mean = np.array([100.0, 0.0, -3.0, 5.0, 0.0])
    train_std = np.array([50.0, 1.0, 2.0, 0.5, 0.0])  # the last unit is constant in training
    true = train_mean + train_std * rng.standard_normal((8, 5))
    true[:, 4] = rng.standard_normal(8)
    decoded = true + 0.5 * rng.standard_normal((8, 5))
    correlations = pattern_correlations(decoded, true, train_mean=train_mean, train_std=train_std)
    kept = slice(0, 4)
    for item in range(8):
        decoded_z = (decoded[item, kept] - train_mean[kept]) / train_std[kept]
        true_z = (true[item, kept] - train_mean[kept]) / train_std[kept]
        assert correlations[item] == pytest.approx(np.corrcoef(decoded_z, true_z)[0, 1], rel=1e-12)
    # Without the statistics, the unit with the large mean dominates and every item looks perfect.
    assert np.all(pattern_correlations(decoded, true) > 0.99)
    assert np.mean(correlations) < 0.95


def test_training_statistics_broadcast_per_channel():
    true = _features()["conv"]
    decoded = true + np.random.default_rng(5).standard_normal(true.shape).astype(np.float32)
    channel_mean = np.array([1.0, -2.0, 0.5]).reshape(3, 1, 1)
    channel_std = np.array([2.0, 1.0, 4.0]).reshape(3, 1, 1)
    table = decoding_accuracy({"conv": decoded}, {"conv": true}, train_mean={"conv": channel_mean},
                              train_std={"conv": channel_std})
    expected = pattern_correlations(decoded, true, train_mean=np.broadcast_to(channel_mean, (3, 4, 4)),
                                    train_std=np.broadcast_to(channel_std, (3, 4, 4)))
    assert table.loc[0, "pattern_correlation"] == pytest.approx(expected.mean(), rel=1e-12)
    with pytest.raises(ValueError, match="does not broadcast"):
        pattern_correlations(decoded, true, train_mean=np.zeros(3))


def test_profile_correlation_in_slices_equals_whole(monkeypatch):
    true = _features()["fc"]
    decoded = true + np.random.default_rng(6).standard_normal(true.shape).astype(np.float32)
    whole = profile_correlations(decoded, true)
    monkeypatch.setattr(accuracy_module, "_UNITS_PER_SLICE", 7)
    np.testing.assert_array_equal(profile_correlations(decoded, true), whole)


def test_table_writes_and_reads_as_tsv():
    true = _features()
    table = decoding_accuracy({"fc": true["fc"][::-1]}, true)
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False, na_rep="n/a")
    read = pd.read_csv(io.StringIO(buffer.getvalue()), sep="\t")
    assert read["layer"].tolist() == ["fc"]
    assert read.loc[0, "profile_correlation"] == pytest.approx(table.loc[0, "profile_correlation"])


def test_mismatching_inputs_are_rejected():
    true = _features()
    with pytest.raises(ValueError, match="no layer 'fc7'"):
        decoding_accuracy({"fc7": true["fc"]}, true)
    with pytest.raises(ValueError, match="shape"):
        decoding_accuracy({"fc": true["fc"][:5]}, true)
    with pytest.raises(ValueError, match="NaN"):
        profile_correlations(np.full((3, 2), np.nan), np.zeros((3, 2)))
