"""Reading the quality volumes (tSNR map, decoder voxel mask) for display."""
import nibabel as nib
import numpy as np

from bidsrecon.grid import same_grid


def load_tsnr_and_mask(tsnr_path, mask_path):
    """The tSNR map and the decoder's voxel mask, both reoriented to RAS+ for display.

    Returns ``(tsnr, mask or None, note)``: the mask is left out (and the note says why) when it is
    absent or not on the tSNR map's grid, e.g. fMRIPrep input in another space than the map.
    """
    image = nib.as_closest_canonical(nib.load(str(tsnr_path)))
    tsnr = np.asarray(image.dataobj, dtype=np.float32)
    tsnr = tsnr.reshape(tsnr.shape[:3])  # a 4-D file with one volume is accepted too
    if mask_path is None or not mask_path.is_file():
        return tsnr, None, "No decoder voxel mask to outline."
    mask_image = nib.as_closest_canonical(nib.load(str(mask_path)))
    if not same_grid(mask_image.shape, mask_image.affine, image.shape, image.affine):
        return tsnr, None, "The decoder's voxel mask is on another grid; it is not outlined."
    mask = np.asarray(mask_image.dataobj).reshape(tsnr.shape) > 0
    return tsnr, mask, "The decoded voxels are outlined in blue."
