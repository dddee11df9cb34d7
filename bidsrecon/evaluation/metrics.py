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

    The mean SSIM of Wang et al. (2004) with a Gaussian window (sigma 1.5, 11 x 11), K1 = 0.01,
    K2 = 0.03 and a data range of 1, on the BT.601 luma of each image, as scikit-image computes it:
    ``skimage.metrics.structural_similarity(gray_recon, gray_truth, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1.0)`` (population covariance; the map
    averaged over the pixels whose window lies inside the image).

    Parameters
    ----------
    recons, truths : ndarray, shape (n, H, W, 3)
        Values in [0, 1]; H and W at least 11.

    Returns
    -------
    ndarray, shape (n,)
        1 for identical images.
    """
    from skimage.metrics import structural_similarity

    recons, truths = _check_pair(recons, truths)
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(recons.shape[1:3]) < 2 * radius + 1:
        raise ValueError(f"SSIM needs images of at least {2 * radius + 1}x{2 * radius + 1} "
                         f"pixels, got {recons.shape[1]}x{recons.shape[2]}.")
    return np.array([
        structural_similarity(x, y, gaussian_weights=True, sigma=SSIM_SIGMA, truncate=SSIM_TRUNCATE,
                              use_sample_covariance=False, data_range=1.0, K1=SSIM_K1, K2=SSIM_K2)
        for x, y in zip(luma(recons), luma(truths))])


def _check_pair(recons, truths):
    recons = np.asarray(recons)
    truths = np.asarray(truths)
    if recons.ndim != 4 or recons.shape[-1] != 3:
        raise ValueError(f"Expected images of shape (n, H, W, 3), got {recons.shape}.")
    if recons.shape != truths.shape:
        raise ValueError(f"Reconstructions have shape {recons.shape}, true images {truths.shape}.")
    return recons, truths
