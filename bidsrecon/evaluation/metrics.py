"""Low-level image metrics of reconstructions: PixCorr and SSIM, one value per item.

Both are the low-level rows of the evaluation table that most reconstruction papers report
(Ozcelik & VanRullen 2023, *Natural scene reconstruction from fMRI signals using generative
latent diffusion*, Sci Rep 13: 15666; Scotti et al. 2023, *Reconstructing the mind's eye*,
NeurIPS): PixCorr is the Pearson correlation of all pixel values of a reconstruction with those
of its image; SSIM is the structural similarity of Wang, Bovik, Sheikh & Simoncelli (2004),
*Image quality assessment: from error visibility to structural similarity*, IEEE Trans Image
Process 13(4): 600-612, computed on grayscale images.

Images are arrays of shape (n, H, W, 3) with values in [0, 1], as everywhere in bidsrecon.
"""
import numpy as np
from scipy.ndimage import gaussian_filter

from bidsrecon.evaluation.identification import pixel_correlation

#: ITU-R BT.601 luma weights of R, G, B.
BT601_LUMA = (0.299, 0.587, 0.114)
#: Wang et al. (2004), section III.C: the constants K1, K2 and the Gaussian window's SD.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
#: The Gaussian window is cut at this many SDs (11 x 11 pixels at sigma 1.5), as in
#: scikit-image's ``structural_similarity``, whose call with ``gaussian_weights=True,
#: sigma=1.5, use_sample_covariance=False`` is the literature's SSIM.
SSIM_TRUNCATE = 3.5


def pixcorr(recons, truths):
    """Pearson correlation of each reconstruction's pixels with those of its image (PixCorr).

    Parameters
    ----------
    recons, truths : ndarray, shape (n, H, W, 3)
        Item ``i`` of ``truths`` is the image ``recons[i]`` reconstructs. All pixels of all
        channels of an item are one vector.

    Returns
    -------
    ndarray, shape (n,)
        Correlations in [-1, 1]; 0 for a constant image (no defined correlation).
    """
    recons, truths = _check_pair(recons, truths)
    return np.nan_to_num(pixel_correlation(recons, truths), nan=0.0)


def luma(images):
    """Grayscale of RGB images by the ITU-R BT.601 luma weights.

    Parameters
    ----------
    images : ndarray, shape (..., 3)

    Returns
    -------
    ndarray, shape (...), float64
    """
    images = np.asarray(images, dtype=np.float64)
    if images.shape[-1] != 3:
        raise ValueError(f"Expected RGB images with 3 channels last, got shape {images.shape}.")
    return images @ np.asarray(BT601_LUMA)


def ssim(recons, truths):
    """Structural similarity of each grayscale reconstruction with its grayscale image.

    The mean SSIM of Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01,
    K2 = 0.03 and a data range of 1, on the BT.601 luma of each image. Local means, variances
    and covariance are Gaussian-weighted averages (population, not sample, covariance); the
    SSIM map is averaged over the pixels whose window lies inside the image (a 5-pixel border
    is left out). The same as ``skimage.metrics.structural_similarity(gray_recon, gray_truth,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)`` on float64
    grayscale images (checked in ``tests/test_metrics.py``).

    Parameters
    ----------
    recons, truths : ndarray, shape (n, H, W, 3)
        Values in [0, 1]; H and W at least 11.

    Returns
    -------
    ndarray, shape (n,)
        1 for identical images.
    """
    recons, truths = _check_pair(recons, truths)
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(recons.shape[1:3]) < 2 * radius + 1:
        raise ValueError(f"SSIM needs images of at least {2 * radius + 1}x{2 * radius + 1} "
                         f"pixels, got {recons.shape[1]}x{recons.shape[2]}.")
    return np.array([_ssim_gray(x, y, radius) for x, y in zip(luma(recons), luma(truths))])


def _ssim_gray(x, y, radius, data_range=1.0):
    """Mean SSIM of two 2-D float64 images (Wang et al. 2004, eq. 13, averaged as in eq. 17)."""
    def local_mean(image):
        # Reflecting borders, as scikit-image does; the border is cropped below anyway.
        return gaussian_filter(image, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x * mu_x
    var_y = local_mean(y * y) - mu_y * mu_y
    cov_xy = local_mean(x * y) - mu_x * mu_y
    ssim_map = (((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2))
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return float(ssim_map[radius:-radius, radius:-radius].mean())


def _check_pair(recons, truths):
    recons = np.asarray(recons)
    truths = np.asarray(truths)
    if recons.ndim != 4 or recons.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (n, H, W, 3), got {recons.shape}.")
    if recons.shape != truths.shape:
        raise ValueError(f"Reconstructions have shape {recons.shape}, true images {truths.shape}.")
    return recons, truths
