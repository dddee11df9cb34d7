"""The DGN generator: architecture, loading the lab's file, rendering (bidsrecon.recon.generator)."""
import numpy as np
import pytest
import torch

from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.recon import generator as dgn


@pytest.fixture(scope="module")
def random_generator():
    return dgn.random_generator(seed=3)


def test_generator_maps_a_latent_to_a_256_px_bgr_image():
    module = dgn.DGNGenerator()
    with torch.no_grad():
        out = module(torch.zeros(2, dgn.LATENT_SIZE))
    assert out.shape == (2, 3, 256, 256)
    # Three 4,096² fully connected layers and nine up-convolutions (Dosovitskiy & Brox 2016).
    assert sum(p.numel() for p in module.parameters()) == 3 * (4096 * 4096 + 4096) + sum(
        c_in * c_out * k * k + c_out for _, c_in, c_out, k in dgn._UP)


def test_render_crops_the_centre_and_undoes_caffe_preprocessing(random_generator):
    latent = torch.rand(2, dgn.LATENT_SIZE)
    with torch.no_grad():
        bgr = random_generator._module(latent)
        rgb = random_generator.render(latent, 224)
        small = random_generator.render(latent, 64)
    centre = bgr[:, :, 16:240, 16:240]
    mean_rgb = torch.tensor(dgn.CAFFE_MEAN_BGR[::-1]).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb * 255, centre.flip(1) + mean_rgb)
    assert small.shape == (2, 3, 64, 64)


def test_generator_weights_load_under_either_naming(tmp_path, random_generator):
    state = random_generator._module.state_dict()
    named = tmp_path / "named.pt"
    torch.save(state, named)
    # The lab's module also registers its layers inside two nn.Sequential containers, so its
    # state dict can hold every tensor twice: by name and by position.
    both = tmp_path / "both.pt"
    aliases = {f"{position}.{parameter}": state[f"{name}.{parameter}"]
               for position, name in dgn._SEQUENTIAL_ALIASES.items()
               for parameter in ("weight", "bias")}
    torch.save({**state, **aliases}, both)
    positional = tmp_path / "positional.pt"
    torch.save(aliases, positional)
    latent = torch.rand(1, dgn.LATENT_SIZE)
    with torch.no_grad():
        expected = random_generator.render(latent, 64)
        for path in (named, both, positional):
            loaded = dgn.load_generator(path)
            assert not loaded.is_random and loaded.weights_sha256
            torch.testing.assert_close(loaded.render(latent, 64), expected)


def test_generator_file_of_another_network_names_the_keys(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(BidsReconError, match="wrong.pt") as error:
        dgn.load_generator(path)
    assert error.value.exit_code == EXIT_INPUT_MISSING
    assert "defc7.weight" in str(error.value) and "fc.weight" in str(error.value)


def test_random_generator_says_so(random_generator):
    assert random_generator.is_random and "random" in random_generator.description


def test_latent_bound_from_a_number_or_a_file(tmp_path):
    assert dgn.read_latent_bound("4.5") == 4.5
    path = tmp_path / "fc7_bounds.txt"
    np.savetxt(path, np.arange(dgn.LATENT_SIZE, dtype=float))
    np.testing.assert_array_equal(dgn.read_latent_bound(path), np.arange(dgn.LATENT_SIZE))
    np.savetxt(path, np.ones(10))
    with pytest.raises(BidsReconError, match="4096 latent bounds"):
        dgn.read_latent_bound(path)
    with pytest.raises(BidsReconError, match="neither a number nor a file"):
        dgn.read_latent_bound(tmp_path / "missing.txt")
