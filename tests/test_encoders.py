"""The encoder registry, weight loading and pre-activation features (bidsrecon.encoders)."""
import hashlib

import pytest
import skimage.data
import sklearn.datasets
import torch
import torchvision
from PIL import Image
from torch.nn import functional as F

from bidsrecon.encoders import available_encoders, efficientnet_lite, get_encoder, vgg19
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, EXIT_INPUT_MISSING, BidsReconError
from bidsrecon.images import load_images

IMAGENET_CLASSES = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
VGG_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv3_4", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2",
              "conv5_3", "conv5_4", "fc6", "fc7", "fc8")
EFFICIENTNET_LAYERS = ("stem", *(f"block{i}" for i in range(1, 17)), "head", "fc")
#: scikit-image photographs and ImageNet classes one of which must be in the top 5.
PHOTOGRAPHS = {
    "chelsea": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "rocket": {"missile", "projectile", "space shuttle"},
}


@pytest.fixture(scope="module")
def lite0():
    return get_encoder("efficientnet-lite0")


@pytest.fixture(scope="module")
def vgg_random():
    return get_encoder("vgg19-random", seed=3)


def _photographs(tmp_path, size):
    """The PHOTOGRAPHS through bidsrecon's own image loading, as a (B, 3, H, W) tensor."""
    paths = []
    for name in PHOTOGRAPHS:
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1])
    return torch.from_numpy(load_images(paths, size)).permute(0, 3, 1, 2)


def test_registry_lists_the_encoders():
    assert set(available_encoders()) == {
        "efficientnet-lite0", "efficientnet-lite0-random", "vgg19", "vgg19-caffe", "vgg19-caffe-imagery", "vgg19-random"}


def test_unknown_encoder_lists_the_available_ones():
    with pytest.raises(BidsReconError, match="vgg19-random") as error:
        get_encoder("alexnet")
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS
    assert "alexnet" in str(error.value)


def test_random_encoder_refuses_a_weights_file(tmp_path):
    with pytest.raises(BidsReconError, match="random weights") as error:
        get_encoder("vgg19-random", weights_file=tmp_path / "w.pth")
    assert error.value.exit_code == EXIT_BAD_ARGUMENTS


def test_efficientnet_lite0_classifies_photographs(lite0, tmp_path):
    with torch.no_grad():
        logits = lite0.features(_photographs(tmp_path, 224), ["fc"])["fc"]
    for name, row in zip(PHOTOGRAPHS, logits):
        top5 = {IMAGENET_CLASSES[i] for i in row.topk(5).indices}
        assert top5 & PHOTOGRAPHS[name], f"{name}: top 5 {sorted(top5)}"


def test_efficientnet_lite0_input_scaling_matches_its_batch_norm(tmp_path):
    # The first batch norm holds the statistics of the stem convolution's output on ImageNet.
    # Natural images scaled as the weights expect reproduce its second moments (ratio ~1);
    # ImageNet's mean/SD scaling would make them ~5x too large.
    paths = []
    for name, image in _natural_images().items():
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(image).save(paths[-1])
    images = torch.from_numpy(load_images(paths, 224)).permute(0, 3, 1, 2)
    model = efficientnet_lite.EfficientNetLite0()
    state = torch.load(efficientnet_lite.packaged_weights_path(), weights_only=True)
    model.load_state_dict(efficientnet_lite.map_checkpoint_keys(state), strict=True)
    mean = torch.tensor(efficientnet_lite.INPUT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(efficientnet_lite.INPUT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        stem_conv = model.stem.conv(model.stem.pad((images - mean) / std))
    bn = model.stem.bn
    live = bn.running_var > 1e-6
    second_moment = (stem_conv - bn.running_mean.view(1, -1, 1, 1)).square().mean((0, 2, 3))
    ratio = (second_moment / bn.running_var)[live]
    assert 0.7 < ratio.median() < 1.4


def _natural_images():
    """Eight photographs bundled with scikit-image and scikit-learn (uint8 arrays)."""
    images = {name: getattr(skimage.data, name)()
              for name in ["chelsea", "coffee", "rocket", "astronaut", "camera"]}
    images["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    images.update(zip(["china", "flower"], sklearn.datasets.load_sample_images().images))
    return images


@pytest.mark.parametrize("size, pads", [(224, (0, 1)), (225, (1, 1)), (7, (1, 1))])
def test_same_padding_puts_the_extra_pixel_bottom_right(size, pads):
    pad = efficientnet_lite.SamePad2d(kernel_size=3, stride=2)
    assert pad._pads(size) == pads
    assert pad(torch.zeros(1, 1, size, size)).shape[-1] == size + sum(pads)


def test_efficientnet_feature_shapes_at_any_size(lite0):
    features = lite0.features(torch.rand(2, 3, 33, 40))
    assert tuple(features) == EFFICIENTNET_LAYERS
    # SAME padding: each stride-2 stage gives ceil(size / 2).
    assert features["stem"].shape == (2, 32, 17, 20)
    assert features["block16"].shape == (2, 320, 2, 2)
    assert features["fc"].shape == (2, 1000)


def test_efficientnet_layers_are_pre_activation(lite0):
    features = lite0.features(torch.rand(1, 3, 64, 64), ["stem", "head", "block3"])
    # ReLU6 would bound these to [0, 6].
    for name, values in features.items():
        assert values.min() < 0, name
    assert features["stem"].max() > 6 or features["head"].max() > 6


def test_efficientnet_fc_is_the_network_output(lite0):
    images = torch.rand(2, 3, 64, 64)
    normalised = (images - torch.tensor(efficientnet_lite.INPUT_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(efficientnet_lite.INPUT_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = lite0._module(normalised)
        features = lite0.features(images, ["fc"])
    torch.testing.assert_close(features["fc"], expected)


def test_encoder_with_weights_describes_them(lite0):
    path = efficientnet_lite.packaged_weights_path()
    assert not lite0.is_random
    assert lite0.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name in lite0.description and str(path.parent) not in lite0.description  # no local path
    assert lite0.layers == EFFICIENTNET_LAYERS
    assert set(lite0.default_layers) <= set(lite0.layers)
    assert lite0.mean_rgb == pytest.approx((0.485, 0.456, 0.406))


def test_random_encoders_say_so(vgg_random):
    encoder = get_encoder("efficientnet-lite0-random", seed=7)
    for encoder, seed, layers in [(encoder, 7, EFFICIENTNET_LAYERS), (vgg_random, 3, VGG_LAYERS)]:
        assert encoder.is_random and encoder.weights_sha256 is None
        assert f"random weights (seed={seed}), for tests only" in encoder.description
        assert encoder.layers == layers


def test_random_weights_follow_the_seed():
    images = torch.rand(1, 3, 32, 32)

    def block2(seed):
        encoder = get_encoder("efficientnet-lite0-random", seed=seed)
        with torch.no_grad():
            return encoder.features(images, ["block2"])["block2"]

    torch.testing.assert_close(block2(7), block2(7))
    assert not torch.allclose(block2(7), block2(8))


def test_features_are_frozen_but_differentiable_in_the_image(vgg_random):
    assert all(not p.requires_grad for p in vgg_random._module.parameters())
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    features = vgg_random.features(images, ["conv2_1", "fc7"])
    sum(value.square().sum() for value in features.values()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_vgg_features_are_pre_relu_and_in_network_order(vgg_random):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = vgg_random.features(images, ["fc8", "conv1_1", "fc6", "conv1_2"])
        output = vgg_random._module((images - torch.tensor(vgg19.IMAGENET_MEAN_RGB).view(
            1, 3, 1, 1)) / torch.tensor(vgg19.IMAGENET_STD_RGB).view(1, 3, 1, 1))
    assert list(features) == ["conv1_1", "conv1_2", "fc6", "fc8"]
    # An in-place ReLU after conv1_1 would have zeroed its negative values.
    assert features["conv1_1"].min() < 0
    conv1_2 = vgg_random._module.features[2]
    torch.testing.assert_close(features["conv1_2"], conv1_2(F.relu(features["conv1_1"])))
    torch.testing.assert_close(features["fc8"], output)
    # Adaptive pooling defines the fully connected layers below 224 px too.
    assert features["conv1_1"].shape == (2, 64, 64, 64)
    assert features["fc6"].shape == (2, 4096)


def test_unknown_layer_lists_the_valid_ones(vgg_random):
    with pytest.raises(BidsReconError, match="conv5_4") as error:
        vgg_random.features(torch.rand(1, 3, 32, 32), ["conv6_1"])
    assert "conv6_1" in str(error.value)


def test_too_small_images_are_refused(vgg_random):
    with pytest.raises(ValueError, match="at least 32"):
        vgg_random.features(torch.rand(1, 3, 16, 16), ["conv1_1"])


def _constant_vgg19_file(path, value=0.01):
    """A valid VGG19 state dict whose tensors are one value each, stored in a few bytes.

    Expanded (stride-0) tensors keep a one-element storage, so the file stays tiny although
    the network has 143M parameters.
    """
    with torch.device("meta"):  # shapes only: skip initialising 143M parameters
        shapes = {key: tensor.shape for key, tensor in vgg19.build_vgg19().state_dict().items()}
    torch.save({key: torch.tensor(value).expand(shape) for key, shape in shapes.items()}, path)
    return path


def test_vgg19_loads_a_weights_file(tmp_path):
    path = _constant_vgg19_file(tmp_path / "vgg19.pth")
    encoder = get_encoder("vgg19", weights_file=path)
    assert not encoder.is_random and encoder.name == "vgg19"
    assert encoder.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        conv1_1 = encoder.features(images, ["conv1_1"])["conv1_1"]
    # Every filter is 0.01 everywhere with bias 0.01: 0.01 * (window sum of the input) + 0.01.
    normalised = (images - torch.tensor(vgg19.IMAGENET_MEAN_RGB).view(1, 3, 1, 1)) \
        / torch.tensor(vgg19.IMAGENET_STD_RGB).view(1, 3, 1, 1)
    expected = F.conv2d(normalised, torch.full((1, 3, 3, 3), 0.01), padding=1) + 0.01
    torch.testing.assert_close(conv1_1, expected.expand_as(conv1_1))


def test_vgg19_caffe_takes_bgr_0_255_minus_the_mean_pixel(tmp_path):
    path = tmp_path / "vgg19_caffe.pth"
    state = {key: value.clone() for key, value in torch.load(
        _constant_vgg19_file(tmp_path / "vgg19.pth"), weights_only=True).items()}
    # Filter 0 reads only the first input channel: for the Caffe network, that is blue.
    state["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    state["features.0.weight"][0, 0, 1, 1] = 1.0
    state["features.0.bias"] = torch.zeros(64)
    torch.save(state, path)
    encoder = get_encoder("vgg19-caffe", weights_file=path)
    assert encoder.name == "vgg19-caffe" and "Caffe" in encoder.description
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        conv1_1 = encoder.features(images, ["conv1_1"])["conv1_1"]
    torch.testing.assert_close(conv1_1[:, 0], 255 * images[:, 2] - vgg19.CAFFE_MEAN_BGR[0])


def test_vgg19_caffe_without_weights_says_what_to_pass():
    with pytest.raises(BidsReconError, match="--encoder-weights") as error:
        get_encoder("vgg19-caffe")
    assert error.value.exit_code == EXIT_INPUT_MISSING


def test_vgg19_finds_weights_in_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    _constant_vgg19_file(tmp_path / "checkpoints" / vgg19.TORCHVISION_FILE_NAME)
    assert get_encoder("vgg19").weights_sha256 is not None


def test_vgg19_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(BidsReconError) as error:
        get_encoder("vgg19")
    message = str(error.value)
    assert error.value.exit_code == EXIT_INPUT_MISSING
    assert str(tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "--encoder-weights" in message and "IMAGENET1K_V1" in message


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    wrong = tmp_path / "lite0.pth"
    wrong.write_bytes(efficientnet_lite.packaged_weights_path().read_bytes())
    with pytest.raises(BidsReconError, match="lite0.pth") as error:
        get_encoder("vgg19", weights_file=wrong)
    assert error.value.exit_code == EXIT_INPUT_MISSING
    # The message names the keys that do not match, both ways.
    assert "features.0.weight" in str(error.value) and "stem" in str(error.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not torch")
    with pytest.raises(BidsReconError, match="garbage.pth"):
        get_encoder("efficientnet-lite0", weights_file=garbage)


@pytest.mark.slow
@pytest.mark.skipif(not vgg19.default_weights_path().is_file(),
                    reason="torchvision's VGG19 ImageNet weights are not in the torch hub cache")
def test_vgg19_imagenet_weights_classify_photographs(tmp_path):
    encoder = get_encoder("vgg19")
    with torch.no_grad():
        logits = encoder.features(_photographs(tmp_path, 224), ["fc8"])["fc8"]
    for name, row in zip(PHOTOGRAPHS, logits):
        top5 = {IMAGENET_CLASSES[i] for i in row.topk(5).indices}
        assert top5 & PHOTOGRAPHS[name], f"{name}: top 5 {sorted(top5)}"


def test_vgg19_caffe_imagery_variant_is_leaky_and_average_pooled(tmp_path):
    path = _constant_vgg19_file(tmp_path / "vgg19.pth")
    plain, imagery = get_encoder("vgg19-caffe", weights_file=path), get_encoder("vgg19-caffe-imagery", weights_file=path)
    assert imagery.name == "vgg19-caffe-imagery" and "imagery" in imagery.description
    assert imagery.weights_sha256 == plain.weights_sha256
    modules = list(imagery._module.modules())
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) for m in modules)
    assert any(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in modules)
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in modules)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        first = {name: value for name, value in zip(("plain", "imagery"), (
            plain.features(images, ["conv1_1", "conv2_1"]), imagery.features(images, ["conv1_1", "conv2_1"])))}
    # conv1_1 comes before any activation or pooling: the same; conv2_1 follows both: not.
    torch.testing.assert_close(first["plain"]["conv1_1"], first["imagery"]["conv1_1"])
    assert not torch.allclose(first["plain"]["conv2_1"], first["imagery"]["conv2_1"])
