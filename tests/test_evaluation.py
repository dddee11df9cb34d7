import numpy as np
import pytest

from bidsrecon.evaluation import pairwise_identification, pixel_correlation


def test_perfect_reconstructions_are_always_identified():
    truths = np.random.default_rng(0).random((6, 8, 8, 3))
    np.testing.assert_array_equal(pairwise_identification(truths, truths), np.ones(6))


def test_reversed_ranking_scores_zero():
    truths = np.random.default_rng(1).random((5, 40))
    # Each reconstruction is anti-correlated with its own image only.
    recon = -truths
    assert pairwise_identification(recon, truths).mean() < 0.5


def test_random_reconstructions_are_near_chance():
    rng = np.random.default_rng(2)
    scores = pairwise_identification(rng.random((200, 50)), rng.random((200, 50)))
    assert abs(scores.mean() - 0.5) < 0.03


def test_counts_against_each_other_candidate():
    truths = np.array([[0, 1, 2, 3.0], [3, 2, 1, 0.0], [0, 1, 3, 2.0]])
    recon = np.array([[0, 1, 2.5, 2.5], [3, 2, 1, 0.0], [0, 1, 3, 2.0]])
    # rec 0 correlates 0.95 with its truth, -0.95 with truth 1 and 0.95 with truth 2 (a tie: not a win)
    scores = pairwise_identification(recon, truths)
    assert scores[1] == 1.0 and scores[2] == 1.0
    assert scores[0] == 0.5


def test_pixel_correlation_and_input_checks():
    truths = np.random.default_rng(3).random((3, 10))
    np.testing.assert_allclose(pixel_correlation(2 * truths + 1, truths), 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_identification(truths[:1], truths[:1])
    with pytest.raises(ValueError, match="2 true items"):
        pairwise_identification(truths, truths[:2])


def test_identical_candidates_tie_exactly_and_a_tie_loses():
    rng = np.random.default_rng(5)
    truths = rng.random((6, 7, 9, 3))
    truths[4] = truths[1]  # two identical candidates: against item 1 they must tie, not be ranked by rounding
    recons = truths + rng.normal(0, 0.01, truths.shape)
    scores = pairwise_identification(recons, truths)
    # Items 1 and 4 beat every candidate but their twin, which ties (and a tie loses).
    assert scores[1] == pytest.approx(4 / 5) and scores[4] == pytest.approx(4 / 5)
    assert np.all(scores[[0, 2, 3, 5]] == 1.0)


def test_constant_and_nan_items_are_dropped_with_a_warning():
    rng = np.random.default_rng(6)
    truths = rng.random((5, 40))
    recons = truths + rng.normal(0, 0.05, truths.shape)
    truths[2] = 0.5  # a constant candidate: no correlation
    recons[:, 7] = np.nan  # a NaN value column
    with pytest.warns(RuntimeWarning) as caught:
        scores = pairwise_identification(recons, truths)
    messages = " ".join(str(w.message) for w in caught)
    assert "1 of 40 values" in messages and "1 of 5 items are constant" in messages
    assert np.isnan(scores[2])
    np.testing.assert_array_equal(scores[[0, 1, 3, 4]], 1.0)  # judged among the 4 left, not scored 0


def test_shape_identification_judges_each_shape_among_its_own_colour():
    from bidsrecon.evaluation import shape_identification, stimulus_colour

    names = ["colorExpStim01_red_square", "colorExpStim02_red_smallring", "colorExpStim06_green_square",
             "colorExpStim07_green_smallring", "n01518878_5958"]
    assert [stimulus_colour(n) for n in names] == ["red", "red", "green", "green", None]
    assert stimulus_colour("letter_black_img011_A") == "black" and stimulus_colour("../red_x") is None
    rng = np.random.default_rng(7)
    truths = rng.random((5, 6, 6, 3))
    # Each reconstruction shows the other shape of its own colour: colour right, shape wrong.
    recons = truths[[1, 0, 3, 2, 4]]
    scores = shape_identification(recons, truths, names)
    np.testing.assert_array_equal(scores[:4], 0.0)
    assert np.isnan(scores[4])
    np.testing.assert_array_equal(shape_identification(truths, truths, names)[:4], 1.0)
