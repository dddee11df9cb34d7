"""The stage functions the workflow's nodes call, on small arrays (no Nipype, seconds each)."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bidsrecon.decoding.stage import apply_saved, average_test_items, decoding_accuracy_table, fit_and_decode
from bidsrecon.encoders import get_encoder
from bidsrecon.evaluation.scoring import score_sets
from bidsrecon.images import load_images, resize_images

torch.set_num_threads(1)
SIZE = 32


def test_items_are_averaged_in_order_of_first_appearance():
    trials = pd.DataFrame({"set": ["training", "letters", "natural", "letters", "training"],
                           "stimulus": ["a", "B", "cat", "B", "a"]})
    samples = np.arange(10, dtype=float).reshape(5, 2)
    items, item_samples = average_test_items(samples, trials)
    assert items.to_dict("list") == {"set": ["letters", "natural"], "stimulus": ["B", "cat"], "n_trials": [2, 1]}
    np.testing.assert_array_equal(item_samples, [[4.0, 5.0], [4.0, 5.0]])


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """20 training images; voxels a noisy linear map of their coarse pixels; 5 of them shown again
    as test items, 2 trials each, in two sets."""
    folder = tmp_path_factory.mktemp("stimuli")
    rng = np.random.default_rng(0)
    names = [f"image{index:02d}" for index in range(20)]
    stimuli = {}
    for name in names:
        coarse = rng.random((4, 4, 3))
        image = np.kron(coarse, np.ones((SIZE // 4, SIZE // 4, 1)))
        stimuli[name] = str(folder / f"{name}.png")
        Image.fromarray((image * 255).astype(np.uint8)).save(stimuli[name])
    stimuli = pd.Series(stimuli)
    images = load_images(list(stimuli), SIZE)
    mapping = rng.standard_normal((images[:, ::8, ::8].reshape(20, -1).shape[1], 40))
    response = {name: images[index, ::8, ::8].reshape(-1) @ mapping for index, name in enumerate(names)}
    rows = [("training", name) for name in names for _ in range(2)]
    rows += [("natural", name) for name in names[:3] for _ in range(2)]
    rows += [("letters", name) for name in names[3:5] for _ in range(2)]
    trials = pd.DataFrame(rows, columns=["set", "stimulus"])
    samples = np.stack([response[name] + 0.1 * rng.standard_normal(40) for _, name in rows])
    return samples, trials, stimuli, folder


def test_fit_and_decode_then_apply_saved_decode_the_same_features(problem, tmp_path):
    samples, trials, stimuli, folder = problem
    encoder = get_encoder("efficientnet-lite0-random")
    mask = tmp_path / "mask.nii.gz"  # 40 voxels, one per column of the samples
    nib.save(nib.Nifti1Image((np.arange(64) < 40).reshape(4, 4, 4).astype(np.uint8), np.eye(4)), mask)
    options = dict(image_size=SIZE, with_feature_std=True)
    fitted = fit_and_decode(samples, trials, stimuli, encoder, layers=["stem"], stem=str(tmp_path / "sub-01_decoder"),
                            mask_file=str(mask), cv_units=200, **options)
    assert fitted.layers == ["stem"]
    assert list(fitted.items["stimulus"]) == [f"image{index:02d}" for index in range(5)]
    assert set(fitted.decoded) == {"stem", "pixels"} and fitted.decoded["stem"].shape[0] == 5
    assert set(fitted.feature_std) == {"stem"}
    # Each item's decoded features are nearest the true features of its own image.
    true = encoder.features(torch.from_numpy(load_images(list(stimuli[:5]), SIZE)).permute(0, 3, 1, 2),
                            layers=["stem"])["stem"].detach().numpy().reshape(5, -1)
    decoded = fitted.decoded["stem"].reshape(5, -1) - fitted.train_mean["stem"].reshape(1, -1)
    correlation = np.corrcoef(decoded, true - fitted.train_mean["stem"].reshape(1, -1))[:5, 5:]
    assert (correlation.argmax(axis=1) == np.arange(5)).all(), correlation

    # The saved decoder, applied to the test trials only, gives the same numbers.
    test = trials["set"] != "training"
    applied = apply_saved(samples[test.to_numpy()], trials[test].reset_index(drop=True), stimuli, encoder,
                          str(tmp_path / "sub-01_decoder"), **options)
    assert applied.layers == fitted.layers and applied.decoder_sidecar == fitted.decoder_sidecar
    pd.testing.assert_frame_equal(applied.items, fitted.items)
    for layer in fitted.decoded:
        np.testing.assert_array_equal(applied.decoded[layer], fitted.decoded[layer])
        np.testing.assert_array_equal(applied.train_mean[layer], fitted.train_mean[layer])

    table = decoding_accuracy_table(fitted, encoder, stimuli, SIZE, n_units=300)
    assert list(table[["set", "layer"]].itertuples(index=False, name=None)) == [
        ("natural", "stem"), ("natural", "pixels"), ("letters", "stem"), ("letters", "pixels")]
    assert (table["pattern_correlation"] > 0.5).all(), table


def test_score_sets_perfect_and_single_item_sets():
    rng = np.random.default_rng(1)
    truths = rng.random((9, 16, 16, 3)).astype(np.float32)
    items = pd.DataFrame({"set": ["natural"] * 8 + ["imagery"], "stimulus": list("abcdefghi"), "n_trials": 2})
    scored, sets, columns = score_sets(truths.copy(), truths, items, n_permutations=99, seed=0)
    natural, imagery = sets.set_index("set").loc["natural"], sets.set_index("set").loc["imagery"]
    assert natural["identification_pixel"] == 1.0 and natural["pixel_correlation"] == pytest.approx(1.0)
    assert natural["identification_pixel_p"] == pytest.approx(1 / 100)
    assert natural["n_trials"] == 16 and natural["n_items_dropped"] == 0
    # One item: nothing to tell apart.
    assert np.isnan(imagery["identification_pixel"]) and np.isnan(scored.loc[8, "identification_pixel"])
    assert "identification_pixel" not in items  # the caller's table is left alone
    assert all(column.startswith("identification_") and column in sets for column in columns)


def _plan(folder, *, fmriprep=False, saved=False, simulated=False):
    from bidsrecon.bids.collect import Run
    from bidsrecon.decoding.saved import SavedDecoder
    from bidsrecon.participant_plan import ParticipantPlan, RunInputs

    def touch(name):
        (folder / name).write_bytes(b"x")
        return str(folder / name)

    sets = ["natural"] if saved else ["training", "training", "natural"]
    runs = [RunInputs(Run(touch(f"bold{index}.nii.gz"), touch(f"events{index}.tsv"), 2.0, 100, "s", "t",
                          str(index), set_name, pd.DataFrame()), str(folder / f"bold{index}.nii.gz"),
                      mask=touch(f"mask{index}.nii.gz") if fmriprep else None,
                      confounds=touch(f"confounds{index}.tsv") if fmriprep else None)
              for index, set_name in enumerate(sets)]
    touch("sub-01_decoder.json")
    decoder = SavedDecoder(str(folder / "sub-01_decoder"), touch("saved_mask.nii.gz"),
                           None if fmriprep else touch("reference.nii.gz"), {}) if saved else None
    return ParticipantPlan("01", runs, [touch(f"trials{index}.tsv") for index in range(len(runs))],
                           touch("stimuli.tsv"), [], decoder, fmriprep=fmriprep, simulated=simulated,
                           sources=[f"bids:raw:bold{index}.nii.gz" for index in range(len(runs))])


@pytest.mark.parametrize(("fmriprep", "saved", "mode", "inputs_nodes"), [
    (False, False, "raw", {"realign_reference", "mean_reference", "brain_mask", "build_mask", "realign"}),
    (True, False, "fmriprep", {"build_mask"}),
    (False, True, "saved_reference", {"realign"}),
    (True, True, "fmriprep", set()),
])
def test_one_inputs_workflow_per_mode_feeds_the_same_stages(tmp_path, fmriprep, saved, mode, inputs_nodes):
    from bidsrecon.config import Config
    from bidsrecon.workflows.participant import init_participant_wf

    plan = _plan(tmp_path, fmriprep=fmriprep, saved=saved)
    assert plan.input_mode == mode
    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", work_dir=tmp_path / "work", omp_nthreads=1)
    workflow = init_participant_wf(plan, config)
    names = set(workflow.list_node_names())
    inputs_wf = f"{mode}_inputs_wf" if mode != "saved_reference" else "saved_reference_wf"
    assert {name.split(".", 1)[1] for name in names if name.startswith(inputs_wf + ".")} == inputs_nodes | {
        "outputnode"}
    assert {"decode_wf.run_samples", "decode_wf.decode", "recon_wf.reconstruct", "recon_wf.evaluate",
            "outputs_wf.tsnr", "outputs_wf.write_derivatives"} <= names
    if saved:
        assert workflow.get_node("decode_wf.decode").inputs.decoder_file == plan.saved_decoder.sidecar_file
    assert workflow.get_node("noise_ceiling") is None


def test_only_a_simulated_dataset_gets_the_noise_ceiling(tmp_path):
    from bidsrecon.config import Config
    from bidsrecon.workflows.participant import init_participant_wf

    config = Config(bids_dir=tmp_path, output_dir=tmp_path / "out", work_dir=tmp_path / "work", omp_nthreads=1)
    workflow = init_participant_wf(_plan(tmp_path, simulated=True), config)
    assert workflow.get_node("noise_ceiling") is not None


def test_reconstruct_decoded_recovers_the_image_whose_features_it_was_given(problem):
    from bidsrecon.recon.stage import reconstruct_decoded

    _, _, stimuli, _ = problem
    encoder = get_encoder("efficientnet-lite0-random")
    images = load_images(list(stimuli[:2]), SIZE)
    true = encoder.features(torch.from_numpy(images).permute(0, 3, 1, 2), layers=["stem", "block1"])
    features = {"decoded": {layer: value.detach().numpy() for layer, value in true.items()}}
    result = reconstruct_decoded(features, encoder, image_size=SIZE, iterations=40, correction="none",
                                 snapshot_every=20)
    assert result.images.shape == images.shape and result.images.dtype == np.float32
    # Without decoded pixels the paper's flat start is used, and the description says so.
    assert result.description["start"] == "flat" and result.description["pixel_weight"] == 0.0
    assert result.description["device"] == "cpu" and result.description["n_iter"] == 40
    assert sorted(result.snapshots) == ["iter-0020", "iter-0040"]
    def correlation(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    own = [correlation(result.images[i], images[i]) for i in range(2)]
    other = [correlation(result.images[i], images[1 - i]) for i in range(2)]
    assert min(own) > max(other) and min(own) > 0.5, (own, other)


def test_run_quality_measures_and_carpet(tmp_path):
    """Global signal and DVARS per volume (a spike shows), and the carpet plot as a PNG."""
    from bidsrecon.preproc.qc import volume_quality
    from bidsrecon.reports.plots import carpet

    rng = np.random.default_rng(0)
    data = 1000 + 10 * rng.standard_normal((6, 6, 4, 30)).astype(np.float32)
    data[..., 15] += 200  # one volume jumps: a stripe, and a DVARS peak
    bold, mask = tmp_path / "bold.nii.gz", tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), bold)
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4), np.uint8), np.eye(4)), mask)
    quality = volume_quality(bold, mask)
    assert list(quality.columns) == ["global_signal", "dvars", "std_dvars"] and len(quality) == 30
    assert np.isnan(quality["dvars"][0]) and quality["std_dvars"].idxmax() in (15, 16)
    assert quality["global_signal"][15] == pytest.approx(1200, abs=5)
    png = carpet(bold, mask, 2.0, quality)
    assert png.startswith(b"\x89PNG") and Image.open(__import__("io").BytesIO(png)).size[0] >= 800


class _SizeRecorder:
    """An encoder that notes the side of every image it runs on."""

    def __init__(self, encoder):
        self._encoder, self.sides = encoder, []

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def features(self, images, layers=None):
        self.sides += [images.shape[-1]] * len(images)
        return self._encoder.features(images, layers=layers)


def test_the_penalty_pass_can_run_on_smaller_images(problem, tmp_path):
    """penalty_size: one pass of the training images at that size for the penalty, one at the image size
    that decodes; the decoder records the size and still tells the items apart."""
    samples, trials, stimuli, _ = problem
    encoder = _SizeRecorder(get_encoder("efficientnet-lite0-random"))
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image((np.arange(64) < 40).reshape(4, 4, 4).astype(np.uint8), np.eye(4)), mask)
    size = 2 * SIZE  # the encoders' smallest input is 32 px
    fitted = fit_and_decode(samples, trials, stimuli, encoder, layers=["stem"], image_size=size, cv_units=200,
                            stem=str(tmp_path / "sub-01_decoder"), mask_file=str(mask), penalty_size=SIZE)
    # 20 training images at 32 px for the penalty, then at 64 px (one more first image sizes the layers).
    assert encoder.sides.count(SIZE) == 20 and encoder.sides.count(size) in (20, 21)
    sidecar = pd.read_json(fitted.decoder_sidecar, typ="series")
    assert sidecar["PenaltyImageSize"] == SIZE and sidecar["ImageSize"] == size
    true = encoder.features(torch.from_numpy(load_images(list(stimuli[:5]), size)).permute(0, 3, 1, 2),
                            layers=["stem"])["stem"].detach().numpy().reshape(5, -1)
    decoded = fitted.decoded["stem"].reshape(5, -1) - fitted.train_mean["stem"].reshape(1, -1)
    correlation = np.corrcoef(decoded, true - fitted.train_mean["stem"].reshape(1, -1))[:5, 5:]
    assert (correlation.argmax(axis=1) == np.arange(5)).all(), correlation


def test_resize_images_resizes_as_loading_at_that_size(problem):
    _, _, stimuli, _ = problem
    full = load_images(list(stimuli[:3]), SIZE, dtype=np.uint8)
    np.testing.assert_array_equal(resize_images(full, SIZE // 2), load_images(list(stimuli[:3]), SIZE // 2, dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        resize_images(full.astype(np.float32), 8)


def test_penalty_image_size_reaches_the_decode_node_and_is_refused_where_nothing_uses_it(tmp_path):
    from bidsrecon.cli import parse_args
    from bidsrecon.errors import BidsReconError
    from bidsrecon.workflows.participant import init_participant_wf

    common = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    config = parse_args([*common, "--image-size", "224", "--penalty-image-size", "112"])
    assert config.penalty_image_size == 112
    workflow = init_participant_wf(_plan(tmp_path), config)
    assert workflow.get_node("decode_wf.decode").inputs.penalty_image_size == 112
    assert parse_args(common).penalty_image_size is None
    for options, message in ((["--penalty-image-size", "64"], "smaller than --image-size 64"),
                             (["--penalty-image-size", "16"], "at least 32 pixels"),
                             (["--penalty-image-size", "32", "--decoder", "fastl2lir"], "--decoder fastl2lir"),
                             (["--penalty-image-size", "32", "--decoders-dir", str(tmp_path)], "--decoders-dir")):
        with pytest.raises(BidsReconError, match=message):
            parse_args([*common, *options])


def _ridge_and_pixel_decoder(problem, tmp_path, pixel_decoder):
    """The problem decoded twice, with the ridge's small image and with ``pixel_decoder``'s (saved
    at ``tmp_path / "sub-01_decoder"``); returns both and the encoder."""
    samples, trials, stimuli, _ = problem
    encoder = get_encoder("efficientnet-lite0-random")
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image((np.arange(64) < 40).reshape(4, 4, 4).astype(np.uint8), np.eye(4)), mask)
    ridge = fit_and_decode(samples, trials, stimuli, encoder, layers=["stem"], stem=str(tmp_path / "ridge"),
                           mask_file=str(mask), cv_units=200, image_size=SIZE)
    fitted = fit_and_decode(samples, trials, stimuli, encoder, layers=["stem"], stem=str(tmp_path / "sub-01_decoder"),
                            mask_file=str(mask), cv_units=200, pixel_decoder=pixel_decoder, image_size=SIZE)
    return ridge, fitted, encoder


def test_the_luminance_can_be_decoded_by_inversion_and_a_saved_decoder_applies_it(problem, tmp_path):
    samples, trials, stimuli, _ = problem
    ridge, fitted, encoder = _ridge_and_pixel_decoder(problem, tmp_path, "inversion")
    sidecar = pd.read_json(fitted.decoder_sidecar, typ="series")
    assert list(sidecar["Inversion"]) == ["pixels_luminance"]
    assert sidecar["Inversion"]["pixels_luminance"]["Share"] == 1.0
    assert 0 < sidecar["Inversion"]["pixels_luminance"]["Contrast"] <= 2
    assert "Inversion" not in pd.read_json(ridge.decoder_sidecar, typ="series")
    np.testing.assert_array_equal(fitted.decoded["stem"], ridge.decoded["stem"])  # the layers are the ridge's
    assert not np.array_equal(fitted.decoded["pixels"], ridge.decoded["pixels"])
    truth = load_images(list(stimuli[:5]), SIZE)[:, ::8, ::8].reshape(5, -1)
    pixels = fitted.decoded["pixels"][:, :, ::8, ::8].transpose(0, 2, 3, 1).reshape(5, -1)
    correlation = np.corrcoef(pixels - pixels.mean(axis=0), truth - truth.mean(axis=0))[:5, 5:]
    assert (correlation.argmax(axis=1) == np.arange(5)).all(), correlation
    test = trials["set"] != "training"
    applied = apply_saved(samples[test.to_numpy()], trials[test].reset_index(drop=True), stimuli, encoder,
                          str(tmp_path / "sub-01_decoder"), image_size=SIZE)
    np.testing.assert_array_equal(applied.decoded["pixels"], fitted.decoded["pixels"])


def test_the_small_image_can_be_decoded_by_prf_inversion_and_a_saved_decoder_decodes_it_alike(problem, tmp_path):
    """The pRF models are not saved; applying the saved decoder fits them again, to the same bits."""
    samples, trials, stimuli, _ = problem
    ridge, fitted, encoder = _ridge_and_pixel_decoder(problem, tmp_path, "prf")
    sidecar = pd.read_json(fitted.decoder_sidecar, typ="series")
    assert sidecar["PixelDecoder"]["Method"] == "prf" and 0 < sidecar["PixelDecoder"]["VoxelsKept"] <= 40
    np.testing.assert_array_equal(fitted.decoded["stem"], ridge.decoded["stem"])  # the layers are the ridge's
    assert fitted.decoded["pixels"].shape == ridge.decoded["pixels"].shape
    assert not np.allclose(fitted.decoded["pixels"], ridge.decoded["pixels"])
    test = trials["set"] != "training"
    applied = apply_saved(samples[test.to_numpy()], trials[test].reset_index(drop=True), stimuli, encoder,
                          str(tmp_path / "sub-01_decoder"), image_size=SIZE)
    np.testing.assert_array_equal(applied.decoded["pixels"], fitted.decoded["pixels"])
    np.testing.assert_array_equal(applied.decoded["stem"], fitted.decoded["stem"])


def test_prf_without_a_responsive_voxel_keeps_the_ridges_small_image_and_says_why(problem, tmp_path, monkeypatch):
    """The pRF fit's refusal (tests/test_pixel_prf.py) falls back to the ridge, warned and recorded."""
    from bidsrecon.decoding import stage
    from bidsrecon.decoding.pixel_prf import NoResponsiveVoxels

    def refuse(*args):
        raise NoResponsiveVoxels("No voxel's pRF explains more than 0.050 of its responses.")

    monkeypatch.setattr(stage, "fit_prf_decoder", refuse)
    with pytest.warns(UserWarning, match="No voxel's pRF explains .* the kernel ridge's instead"):
        ridge, fitted, _ = _ridge_and_pixel_decoder(problem, tmp_path, "prf")
    record = pd.read_json(fitted.decoder_sidecar, typ="series")["PixelDecoder"]
    assert record["Method"] == "ridge" and record["Requested"] == "prf" and "No voxel" in record["Reason"]
    np.testing.assert_array_equal(fitted.decoded["pixels"], ridge.decoded["pixels"])


def test_pixel_decoder_reaches_the_decode_node_and_is_refused_where_no_decoder_is_fitted(tmp_path):
    from bidsrecon.cli import parse_args
    from bidsrecon.errors import BidsReconError
    from bidsrecon.workflows.participant import init_participant_wf

    common = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    assert parse_args(common).pixel_decoder == "prf"
    for choice in ("both", "ridge"):
        config = parse_args([*common, "--pixel-decoder", choice])
        assert init_participant_wf(_plan(tmp_path), config).get_node("decode_wf.decode").inputs.pixel_decoder == choice
    for options, message in ((["--decoder", "fastl2lir"], "--decoder fastl2lir"),
                             (["--decoders-dir", str(tmp_path)], "--decoders-dir")):
        for choice in ("inversion", "prf"):
            with pytest.raises(BidsReconError, match=message):
                parse_args([*common, "--pixel-decoder", choice, *options])
