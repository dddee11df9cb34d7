"""When two images lie on the same functional grid: same voxel shape, same affine.

Affines of one grid written by different tools (nibabel, FSL, ANTs, a scanner's converter) differ
at rounding level, so they are compared to within :data:`AFFINE_TOLERANCE_MM` (1 micrometre, far
below any voxel). Every such comparison in bidsrecon goes through here.
"""
import numpy as np

AFFINE_TOLERANCE_MM = 1e-3


def same_affine(first, second):
    return bool(np.allclose(np.asarray(first, dtype=float), np.asarray(second, dtype=float), atol=AFFINE_TOLERANCE_MM))


def same_grid(first_shape, first_affine, second_shape, second_affine):
    """True when the first three dimensions agree and the affines agree to within the tolerance."""
    return tuple(first_shape[:3]) == tuple(second_shape[:3]) and same_affine(first_affine, second_affine)
