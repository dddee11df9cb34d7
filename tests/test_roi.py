"""Regions of interest: --roi parsing, ds001506 sourcedata masks, masks on other grids, BuildMask."""
import warnings

import nibabel as nib
import numpy as np
import pytest

from bidsrecon.bids.roi import (
    HEMISPHERES,
    NAMED_ROIS,
    RoiRequest,
    build_roi_mask,
    known_roi_names,
    parse_rois,
    roi_files,
    sourcedata_mask_path,
)
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.interfaces.masks import BuildMask


@pytest.fixture(scope="module")
def bold_file(tiny_dataset):
    return str(next(tiny_dataset.glob("sub-01/ses-perceptionNaturalImageTraining01/func/*_run-01_bold.nii.gz")))


@pytest.fixture(scope="module")
def grid(bold_file):
    image = nib.load(bold_file)
    return image.shape[:3], image.affine


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine), path)
    return str(path)


def _mask(tiny_dataset, hemisphere, label):
    return np.asanyarray(nib.load(sourcedata_mask_path(tiny_dataset, "01", hemisphere, label)).dataobj) > 0


@pytest.fixture
def whole_brain(tmp_path, grid):
    shape, affine = grid
    return _save(tmp_path / "brain.nii.gz", np.ones(shape), affine)


def test_parse_named_and_path_rois():
    requests = parse_rois(["V1", "lh_v2d", "hv4", "mt=/data/sub-{subject}_MT.nii.gz", "RH_VC"])
    assert requests == [
        RoiRequest("V1", None, HEMISPHERES),
        RoiRequest("V2d", None, ("LH",)),
        RoiRequest("hV4", None, HEMISPHERES),
        RoiRequest("mt", "/data/sub-{subject}_MT.nii.gz"),
        RoiRequest("VC", None, ("RH",)),
    ]


def test_unknown_roi_name_lists_the_known_ones():
    with pytest.raises(BidsReconError) as caught:
        parse_rois(["V1", "V9"])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS
    message = str(caught.value)
    assert "'V9'" in message and "NAME=PATH" in message
    for name in known_roi_names():
        assert name in message


@pytest.mark.parametrize("value", ["=mask.nii.gz", "V1=", " = "])
def test_malformed_roi_value(value):
    with pytest.raises(BidsReconError, match="NAME=PATH") as caught:
        parse_rois([value])
    assert caught.value.exit_code == EXIT_BAD_ARGUMENTS


def test_named_rois_expand_to_both_hemispheres_and_their_parts(tiny_dataset):
    files = roi_files(parse_rois(["V1", "V1d", "RH_hV4"]), tiny_dataset, "01")
    names = [f.rsplit("/", 1)[1] for f in files]
    # V1 = V1d + V1v of both hemispheres; V1d again adds nothing; RH_hV4 one file.
    assert names == ["sub-01_mask_LH_V1d.nii.gz", "sub-01_mask_RH_V1d.nii.gz", "sub-01_mask_LH_V1v.nii.gz",
                     "sub-01_mask_RH_V1v.nii.gz", "sub-01_mask_RH_hV4.nii.gz"]
    vc = roi_files(parse_rois(["VC"]), tiny_dataset, "01")
    assert len(vc) == 2 * len(NAMED_ROIS["VC"]) == 22


def test_missing_sourcedata_masks_are_listed(tiny_dataset):
    with pytest.raises(BidsReconError) as caught:
        roi_files(parse_rois(["V1"]), tiny_dataset, "99")
    assert caught.value.exit_code == EXIT_INPUT_MISSING
    assert str(caught.value).count("sub-99_mask_") == 4


def test_user_roi_path_takes_the_subject(tmp_path, grid):
    shape, affine = grid
    path = _save(tmp_path / "sub-07_MT.nii.gz", np.ones(shape), affine)
    assert roi_files(parse_rois([f"MT={tmp_path}/sub-{{subject}}_MT.nii.gz"]), tmp_path, "07") == [path]
    with pytest.raises(BidsReconError, match="sub-08_MT.nii.gz") as caught:
        roi_files(parse_rois([f"MT={tmp_path}/sub-{{subject}}_MT.nii.gz"]), tmp_path, "08")
    assert caught.value.exit_code == EXIT_INPUT_MISSING


def test_roi_mask_is_the_union_within_the_brain(tiny_dataset, bold_file, tmp_path, grid):
    shape, affine = grid
    files = roi_files(parse_rois(["V1", "hV4"]), tiny_dataset, "01")
    union = np.zeros(shape, bool)
    for hemisphere in HEMISPHERES:
        for label in ("V1d", "V1v", "hV4"):
            union |= _mask(tiny_dataset, hemisphere, label)
    # A brain mask without the left half of the grid (the left hemisphere).
    brain = np.ones(shape, bool)
    brain[: shape[0] // 2] = False
    brain_file = _save(tmp_path / "brain.nii.gz", brain, affine)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # masks on the bold grid: no resampling, no warning
        mask, summary = build_roi_mask(bold_file, brain_file, files)
    data = np.asanyarray(mask.dataobj)
    np.testing.assert_array_equal(data > 0, union & brain)
    np.testing.assert_allclose(mask.affine, affine)
    assert summary == {"roi_voxels": int(union.sum()), "mask_voxels": int((union & brain).sum()), "resampled": []}
    right_only = np.zeros(shape, bool)
    for label in ("V1d", "V1v", "hV4"):
        right_only |= _mask(tiny_dataset, "RH", label)
    np.testing.assert_array_equal(data > 0, right_only)


def test_no_roi_gives_the_brain_mask(bold_file, tmp_path, grid):
    shape, affine = grid
    brain = np.zeros(shape, bool)
    brain[2:9, 3:10, 1:6] = True
    mask, summary = build_roi_mask(bold_file, _save(tmp_path / "brain.nii.gz", brain, affine), [])
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj) > 0, brain)
    assert summary["mask_voxels"] == brain.sum()


def _finer_copy(mask, affine, factor):
    """The mask on a grid ``factor`` times finer covering the same space (each voxel split in factor^3)."""
    data = np.kron(mask.astype(np.uint8), np.ones((factor,) * 3, np.uint8))
    step = np.diag([1 / factor] * 3 + [1.0])
    step[:3, 3] = (1 / factor - 1) / 2  # fine voxel 0's centre, in coarse voxel units
    return data, affine @ step


def test_mask_on_another_grid_is_resampled_with_a_warning(tiny_dataset, bold_file, whole_brain, tmp_path, grid):
    shape, affine = grid
    v1 = _mask(tiny_dataset, "LH", "V1d") | _mask(tiny_dataset, "RH", "V1v")
    fine, fine_affine = _finer_copy(v1, affine, 2)
    path = _save(tmp_path / "v1_fine.nii.gz", fine, fine_affine)

    with pytest.warns(UserWarning, match="v1_fine.nii.gz.*resampled"):
        mask, summary = build_roi_mask(bold_file, whole_brain, [path])
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj) > 0, v1)
    assert summary["resampled"] == [path]


def test_partial_volume_rule_keeps_voxels_at_least_half_covered(bold_file, whole_brain, tmp_path, grid):
    shape, affine = grid
    fine = np.zeros(tuple(3 * n for n in shape), np.uint8)
    fine[12:15, 12:15, 9:12] = 1  # all 27 fine voxels of coarse voxel (4, 4, 3)
    fine[18:21, 18:21, 9:11] = 1  # 17 of the 27 of coarse voxel (6, 6, 3), all but its centre
    fine[19, 19, 10] = 0
    fine[25, 25, 10] = 1  # the centre alone of coarse voxel (8, 8, 3): 1 of 27
    fine[3:6, 3:6, 0:1] = 1  # 9 of the 27 of coarse voxel (1, 1, 0)
    _, fine_affine = _finer_copy(np.zeros(shape), affine, 3)
    path = _save(tmp_path / "partial.nii.gz", fine, fine_affine)
    with pytest.warns(UserWarning, match="partial.nii.gz"):
        mask, _ = build_roi_mask(bold_file, whole_brain, [path])
    kept = [tuple(int(i) for i in index) for index in np.argwhere(np.asanyarray(mask.dataobj))]
    assert kept == [(4, 4, 3), (6, 6, 3)]


def test_coarser_mask_takes_the_bold_voxels_it_contains(bold_file, whole_brain, tmp_path, grid):
    shape, affine = grid
    coarse = np.zeros(tuple(n // 2 for n in shape), bool)
    coarse[1, 2, 1] = coarse[4, 3, 2] = True
    coarse_affine = affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    path = _save(tmp_path / "coarse.nii.gz", coarse, coarse_affine)
    with pytest.warns(UserWarning, match="coarse.nii.gz"):
        mask, _ = build_roi_mask(bold_file, whole_brain, [path])
    # Each 6-mm voxel holds 2 x 2 x 2 bold voxels of 3 mm.
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj) > 0, np.kron(coarse, np.ones((2, 2, 2), bool)))


def test_roi_empty_after_resampling_is_an_error(tiny_dataset, bold_file, whole_brain, tmp_path, grid):
    shape, affine = grid
    elsewhere = affine.copy()
    elsewhere[:3, 3] += 500.0  # the same mask, but 50 cm away: another space
    path = _save(tmp_path / "far.nii.gz", _mask(tiny_dataset, "LH", "V1d"), elsewhere)
    with pytest.warns(UserWarning, match="far.nii.gz"), \
            pytest.raises(BidsReconError, match="far.nii.gz.*empty once resampled"):
        build_roi_mask(bold_file, whole_brain, [path])


def test_empty_roi_file_is_an_error(bold_file, whole_brain, tmp_path, grid):
    shape, affine = grid
    path = _save(tmp_path / "empty.nii.gz", np.zeros(shape), affine)
    with pytest.raises(BidsReconError, match="empty.nii.gz is empty"):
        build_roi_mask(bold_file, whole_brain, [path])


def test_roi_outside_the_brain_is_an_error(tiny_dataset, bold_file, tmp_path, grid):
    shape, affine = grid
    brain = np.zeros(shape, bool)
    brain[: shape[0] // 2] = True  # left half only
    brain_file = _save(tmp_path / "brain.nii.gz", brain, affine)
    right = sourcedata_mask_path(tiny_dataset, "01", "RH", "V1d")
    with pytest.raises(BidsReconError, match="no voxel inside the brain mask"):
        build_roi_mask(bold_file, brain_file, [str(right)])


def test_brain_mask_on_another_grid_is_an_error(tiny_dataset, bold_file, tmp_path, grid):
    shape, affine = grid
    brain_file = _save(tmp_path / "brain.nii.gz", np.ones(tuple(n + 1 for n in shape)), affine)
    with pytest.raises(BidsReconError, match="brain mask .* is not on the grid"):
        build_roi_mask(bold_file, brain_file, [])


def test_roi_file_shapes(tiny_dataset, bold_file, whole_brain, tmp_path, grid):
    shape, affine = grid
    v1d = _mask(tiny_dataset, "LH", "V1d")
    single = _save(tmp_path / "single.nii.gz", v1d[..., None], affine)
    mask, _ = build_roi_mask(bold_file, whole_brain, [single])
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj) > 0, v1d)
    series = _save(tmp_path / "series.nii.gz", np.stack([v1d, v1d], axis=-1), affine)
    with pytest.raises(BidsReconError, match="series.nii.gz: expected a 3-D mask"):
        build_roi_mask(bold_file, whole_brain, [series])


def test_build_mask_interface(tiny_dataset, bold_file, tmp_path, grid):
    shape, affine = grid
    files = roi_files(parse_rois(["V2"]), tiny_dataset, "01")
    fine, fine_affine = _finer_copy(_mask(tiny_dataset, "LH", "hV4"), affine, 2)
    fine_file = _save(tmp_path / "hv4_fine.nii.gz", fine, fine_affine)
    brain = _save(tmp_path / "brain.nii.gz", np.ones(shape), affine)
    work = tmp_path / "node"
    work.mkdir()
    with pytest.warns(UserWarning, match="hv4_fine"):
        node = BuildMask(reference_file=bold_file, brain_mask_file=brain, roi_files=files + [fine_file])
        result = node.run(cwd=str(work))
    outputs = result.outputs
    expected = _mask(tiny_dataset, "LH", "hV4")
    for hemisphere in HEMISPHERES:
        expected = expected | _mask(tiny_dataset, hemisphere, "V2d") | _mask(tiny_dataset, hemisphere, "V2v")
    written = nib.load(outputs.out_mask)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj) > 0, expected)
    assert written.shape == shape
    assert outputs.mask_voxels == outputs.roi_voxels == expected.sum()
    assert outputs.resampled_files == [fine_file]
    # Without ROI files the node passes the brain mask through.
    plain = BuildMask(reference_file=bold_file, brain_mask_file=brain).run(cwd=str(work))
    assert plain.outputs.mask_voxels == np.prod(shape)
