"""PixCorr, SSIM, pairwise identification by hand, and the identification permutation test."""
import numpy as np
import pytest
from skimage import data as skdata
from skimage.metrics import structural_similarity
from skimage.transform import resize

from bidsrecon.evaluation import pairwise_identification
from bidsrecon.evaluation.metrics import luma, pixcorr, ssim
from bidsrecon.evaluation.significance import identification_permutation_test


def photographs(size=64):
    """Four of scikit-image's bundled colour photographs, (4, size, size, 3) in [0, 1]."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    return np.stack([resize(getattr(skdata, name)(), (size, size), anti_aliasing=True)
                     for name in names]).astype(np.float32)


def skimage_ssim(recon, truth):
    """The literature's SSIM call, on our BT.601 grayscale computed here by hand, in float64."""
    weights = np.array([0.299, 0.587, 0.114])
    gray_recon = np.asarray(recon, dtype=np.float64) @ weights
    gray_truth = np.asarray(truth, dtype=np.float64) @ weights
    return structural_similarity(gray_recon, gray_truth, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)


def test_ssim_matches_scikit_image_on_random_images():
    rng = np.random.default_rng(0)
    truths = rng.uniform(0, 1, (5, 40, 48, 3)).astype(np.float32)
    recons = np.clip(truths + rng.normal(0, 0.2, truths.shape), 0, 1).astype(np.float32)
    ours = ssim(recons, truths)
    theirs = np.array([skimage_ssim(r, t) for r, t in zip(recons, truths)])
    assert np.max(np.abs(ours - theirs)) < 1e-6


def test_ssim_matches_scikit_image_on_photographs():
    truths = photographs()
    rng = np.random.default_rng(1)
    recons = np.stack([
        np.clip(truths[0] + rng.normal(0, 0.1, truths[0].shape), 0, 1),  # noisy
        truths[1] * 0.6 + 0.2,  # less contrast
        truths[3],  # another photograph
        np.full_like(truths[3], 0.5),  # flat grey
    ]).astype(np.float32)
    ours = ssim(recons, truths)
    theirs = np.array([skimage_ssim(r, t) for r, t in zip(recons, truths)])
    assert np.max(np.abs(ours - theirs)) < 1e-6
    # Every distortion scores below 1, another photograph lowest.
    assert np.all(ours < 0.99) and np.argmin(ours) == 2


def test_ssim_of_an_image_with_itself_is_one():
    truths = photographs()
    assert np.allclose(ssim(truths, truths), 1.0, atol=1e-12)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="shape"):
        ssim(np.zeros((1, 16, 16, 3)), np.zeros((2, 16, 16, 3)))


def test_luma_uses_bt601_weights():
    pixel = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert np.allclose(luma(pixel), [0.299, 0.587, 0.114, 1.0])


def test_pixcorr_matches_numpy_corrcoef():
    truths = photographs(32)
    rng = np.random.default_rng(2)
    recons = np.clip(truths[::-1] * 0.5 + truths * 0.3 + rng.normal(0, 0.1, truths.shape), 0, 1)
    expected = [np.corrcoef(r.ravel(), t.ravel())[0, 1] for r, t in zip(recons, truths)]
    assert np.allclose(pixcorr(recons, truths), expected, atol=1e-12)
    assert np.allclose(pixcorr(truths, truths), 1.0)


def test_pairwise_identification_worked_by_hand():
    # Three "images" of three pixels. Centred, the truths are t1 = (2, -1, -1)/3,
    # t2 = (-1, 2, -1)/3, t3 = (-1, -1, 2)/3: any two correlate at -1/2.
    truths = np.eye(3)
    recons = np.array([
        [1.0, 0.0, 0.0],  # = t1: r(t1) = 1 beats r(t2) = r(t3) = -1/2 -> accuracy 2/2 = 1
        [0.0, 0.0, 1.0],  # = t3: own r(t2) = -1/2 ties r(t1) = -1/2 (a tie loses) and is
                          #   below r(t3) = 1 -> 0/2 = 0
        [2.0, 0.0, 1.0],  # centred (1, -1, 0): dot with t1, t2, t3 = 1, -1, 0 (times 1/3),
                          #   so r = +0.866, -0.866, 0; own r(t3) = 0 beats t2 only -> 1/2
    ])
    assert np.allclose(pairwise_identification(recons, truths), [1.0, 0.0, 0.5])


def test_pairwise_identification_of_two_items():
    # With two items each accuracy is 0 or 1: is the own image the closer of the two?
    truths = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    recons = np.array([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])  # both lean towards the first
    assert np.allclose(pairwise_identification(recons, truths), [1.0, 0.0])


def test_permutation_test_matches_pairwise_identification():
    rng = np.random.default_rng(3)
    truths = rng.normal(size=(12, 50))
    recons = truths + rng.normal(0, 2.0, truths.shape)
    observed, _ = identification_permutation_test(recons, truths, n_permutations=50)
    assert observed == pytest.approx(pairwise_identification(recons, truths).mean(), abs=1e-12)


def test_permutation_test_perfect_reconstructions_are_significant():
    rng = np.random.default_rng(4)
    truths = rng.normal(size=(10, 30))
    observed, p_value = identification_permutation_test(truths, truths, n_permutations=1000)
    # Only the identity permutation (probability 1/10!) reaches an accuracy of 1.
    assert observed == 1.0
    assert p_value <= 2 / 1001


def test_permutation_test_random_reconstructions_give_spread_p_values():
    rng = np.random.default_rng(5)
    p_values = []
    for seed in range(100):
        truths = rng.normal(size=(15, 20))
        recons = rng.normal(size=(15, 20))
        p_values.append(identification_permutation_test(recons, truths, n_permutations=200,
                                                        seed=seed)[1])
    p_values = np.array(p_values)
    # Under the null the p-values are about uniform: mean near 0.5, few below 0.05.
    assert 0.4 < p_values.mean() < 0.6
    assert np.mean(p_values < 0.05) <= 0.12
    assert p_values.min() >= 1 / 201


def test_permutation_test_is_deterministic_per_seed():
    rng = np.random.default_rng(6)
    truths = rng.normal(size=(8, 20))
    recons = truths + rng.normal(0, 3.0, truths.shape)
    first = identification_permutation_test(recons, truths, n_permutations=300, seed=7)
    assert identification_permutation_test(recons, truths, n_permutations=300, seed=7) == first
    others = {identification_permutation_test(recons, truths, n_permutations=300, seed=s)[1]
              for s in range(8, 14)}
    assert len(others | {first[1]}) > 1


def test_permutation_test_takes_a_similarity():
    truths = np.arange(5.0)[:, None] * np.ones((1, 4))
    recons = truths + 0.1

    def negative_distance(a, b):
        return -np.abs(a[:, None, 0] - b[None, :, 0])

    observed, p_value = identification_permutation_test(recons, truths, n_permutations=500,
                                                        similarity=negative_distance)
    assert observed == 1.0 and p_value < 0.05
    with pytest.raises(ValueError, match="at least 2"):
        identification_permutation_test(truths[:1], truths[:1])
