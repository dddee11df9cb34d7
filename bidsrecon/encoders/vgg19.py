"""VGG19 with the paper's layer names and features taken before the ReLU, in two flavours.

``vgg19`` has torchvision's ImageNet weights (RGB in [0, 1] normalised by ImageNet's mean and
SD). ``vgg19-caffe`` has the Kamitani lab's conversion of the Caffe VGG19 that the paper used: the
same architecture and state-dict keys, but the input is BGR on the 0-255 scale with Caffe's mean
pixel subtracted. Features of the two differ, so decoders trained on one do not apply to the
other (REFERENCE.md §1).

The fully connected layers follow torchvision's adaptive average pooling to 7x7 after conv5_4,
so they are defined at any input size; they are the paper's fc6-fc8 only at 224 px.
"""
from pathlib import Path

import torch
import torchvision
from torch import nn

from bidsrecon.encoders.base import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    Encoder,
    build_with_weights,
    file_sha256,
    load_state_dict_file,
    seeded_init,
)
from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError

#: torchvision's file name for ``VGG19_Weights.IMAGENET1K_V1`` in torch hub's checkpoint cache.
TORCHVISION_FILE_NAME = "vgg19-dcbb9e9d.pth"
#: torch.fx nodes of the classifier's three linear layers.
FC_NODES = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}


def build_vgg19():
    """torchvision's VGG19 with every ReLU out of place.

    An in-place ReLU would overwrite the convolution output that feature extraction returns
    as the pre-ReLU feature.
    """
    model = torchvision.models.vgg19(weights=None)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


#: Negative slope of the leaky ReLUs of the lab's VGG19 variant for mental imagery.
IMAGERY_LEAKY_SLOPE = 0.2


def build_vgg19_imagery():
    """The lab's VGG19 variant for reconstructing mental imagery (Shen et al. 2019, REFERENCE.md §1):
    every ReLU leaky (slope 0.2) and every max pooling an average pooling, same weights and names."""
    model = build_vgg19()
    for sequence in (model.features, model.classifier):
        for index, module in enumerate(sequence):
            if isinstance(module, nn.ReLU):
                sequence[index] = nn.LeakyReLU(IMAGERY_LEAKY_SLOPE)
            elif isinstance(module, nn.MaxPool2d):
                sequence[index] = nn.AvgPool2d(kernel_size=2, stride=2)
    return model


def layer_nodes(model):
    """The paper's 19 layer names (conv1_1 … conv5_4, fc6, fc7, fc8) mapped to fx node names."""
    nodes = {}
    block, conv_in_block = 1, 0
    for index, module in enumerate(model.features):
        if isinstance(module, nn.Conv2d):
            conv_in_block += 1
            nodes[f"conv{block}_{conv_in_block}"] = f"features.{index}"
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            block, conv_in_block = block + 1, 0
    nodes.update(FC_NODES)
    return nodes


def default_weights_path():
    """Where torchvision caches the ImageNet weights of VGG19."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE_NAME


def make_vgg19(weights_file=None, device="cpu"):
    """VGG19 with torchvision's ImageNet weights, from ``weights_file`` or torch hub's cache.

    Never downloads and never falls back to random weights: a missing file is an error that
    says how to provide it.
    """
    path = Path(weights_file) if weights_file is not None else default_weights_path()
    if not path.is_file():
        raise BidsReconError(
            f"VGG19 ImageNet weights not found at {path}. Pass the file with "
            f"--encoder-weights FILE, or place torchvision's {TORCHVISION_FILE_NAME} there by "
            "running once with internet access: python -c \"import torchvision; "
            "torchvision.models.vgg19(weights='IMAGENET1K_V1')\"", EXIT_INPUT_MISSING)
    what = "VGG19 weights"
    model = build_with_weights(build_vgg19, load_state_dict_file(path, what), path, what)
    return Encoder("vgg19", model, layer_nodes(model), input_mean=IMAGENET_MEAN_RGB,
                   input_std=IMAGENET_STD_RGB,
                   description=f"VGG19 (torchvision architecture), ImageNet weights {Path(path).name}",
                   weights_sha256=file_sha256(path), device=device)


#: The mean pixel the lab subtracts before its Caffe-converted VGG19, BGR, 0-255: the brain-decoding
#: cookbook's reconstruction scripts use 104, 117, 123 (Caffe's own file has 103.939, 116.779, 123.68;
#: we match the lab's code, which produced the published reconstructions).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


def make_vgg19_caffe(weights_file=None, device="cpu", imagery=False):
    """VGG19 with the lab's Caffe-converted weights, which the user must supply.

    The lab distributes the converted file with its reconstruction code; we do not ship it.
    ``imagery``: the lab's variant for mental imagery (:func:`build_vgg19_imagery`), named
    ``vgg19-caffe-imagery``.
    """
    if weights_file is None:
        raise BidsReconError(
            f"Encoder '{'vgg19-caffe-imagery' if imagery else 'vgg19-caffe'}' needs the Kamitani lab's PyTorch conversion of the Caffe "
            "VGG19 (a state dict with torchvision's key names): pass it with --encoder-weights "
            "FILE. The lab publishes it with its DeepImageReconstruction code.",
            EXIT_INPUT_MISSING)
    path = Path(weights_file)
    what = "VGG19 weights (the lab's Caffe conversion)"
    model = build_with_weights(build_vgg19_imagery if imagery else build_vgg19, load_state_dict_file(path, what),
                               path, what)
    variant = ", leaky ReLU 0.2 and average pooling (the lab's imagery variant)" if imagery else ""
    return Encoder("vgg19-caffe-imagery" if imagery else "vgg19-caffe", model, layer_nodes(model),
                   input_mean=tuple(value / 255 for value in CAFFE_MEAN_BGR[::-1]),
                   input_std=(1 / 255,) * 3, bgr_input=True,
                   description=f"VGG19 (Caffe conversion: BGR, 0-255, mean pixel subtracted{variant}), "
                               f"weights {Path(path).name}",
                   weights_sha256=file_sha256(path), device=device)


def make_vgg19_random(seed=0, device="cpu"):
    """VGG19 with torchvision's seeded random initialisation, for tests only."""
    model = seeded_init(build_vgg19, seed)
    return Encoder("vgg19-random", model, layer_nodes(model), input_mean=IMAGENET_MEAN_RGB,
                   input_std=IMAGENET_STD_RGB,
                   description=f"VGG19 (torchvision architecture), random weights (seed={seed}), "
                               "for tests only",
                   weights_sha256=None, device=device)
