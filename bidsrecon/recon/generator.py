"""The DGN image prior: a deep generator network whose 4,096-d input is optimised instead of pixels.

Architecture of Dosovitskiy & Brox (2016), "Generating images with perceptual similarity metrics
based on deep networks" (the generator that inverts AlexNet fc7), as used by Shen et al. (2019)
and as the Kamitani lab distributes it converted to PyTorch (REFERENCE.md §1): three fully
connected layers of 4,096 units, a reshape to 256×4×4, then up-convolutions to 3×256×256, every
layer but the last followed by a leaky ReLU of slope 0.3. Its output is an image in Caffe's
convention (BGR, 0-255, mean pixel subtracted), centre-cropped to 224 px before the encoder.

The lab's weights are not redistributable by us: users pass their file (``--generator-weights``);
seeded random weights exist for tests and are marked as such.
"""
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bidsrecon.encoders.base import build_with_weights, file_sha256, load_state_dict_file, seeded_init
from bidsrecon.encoders.vgg19 import CAFFE_MEAN_BGR
from bidsrecon.errors import EXIT_INPUT_MISSING, BidsReconError

#: Side of the generator's output and of the centre crop the encoder sees (Shen et al. 2019).
OUTPUT_SIZE = 256
CROP_SIZE = 224
LATENT_SIZE = 4096
LEAKY_SLOPE = 0.3

#: Our layer names, in order, with (in, out) channels for the up-convolutions; ``deconvN`` are
#: 4×4 stride-2 (doubling the size), ``convN_1`` 3×3 stride-1 transposed convolutions.
_FULLY_CONNECTED = ("defc7", "defc6", "defc5")
_UP = (("deconv5", 256, 256, 4), ("conv5_1", 256, 512, 3), ("deconv4", 512, 256, 4),
       ("conv4_1", 256, 256, 3), ("deconv3", 256, 128, 4), ("conv3_1", 128, 128, 3),
       ("deconv2", 128, 64, 4), ("deconv1", 64, 32, 4), ("deconv0", 32, 3, 4))
#: The lab's file may name the same tensors by their position in its two ``nn.Sequential``
#: containers (``defc.0`` …, ``deconv.0`` …); activations sit at the odd positions.
_SEQUENTIAL_ALIASES = {
    **{f"defc.{2 * i}": name for i, name in enumerate(_FULLY_CONNECTED)},
    **{f"deconv.{2 * i}": name for i, (name, *_) in enumerate(_UP)},
}


class DGNGenerator(nn.Module):
    """Dosovitskiy & Brox's fc7 generator: (B, 4096) latent → (B, 3, 256, 256) Caffe-space BGR."""

    def __init__(self):
        super().__init__()
        for name in _FULLY_CONNECTED:
            setattr(self, name, nn.Linear(LATENT_SIZE, LATENT_SIZE))
        for name, channels_in, channels_out, kernel in _UP:
            stride = 2 if kernel == 4 else 1
            setattr(self, name, nn.ConvTranspose2d(channels_in, channels_out, kernel, stride, 1))

    def forward(self, latent):
        hidden = latent
        for name in _FULLY_CONNECTED:
            hidden = nn.functional.leaky_relu(getattr(self, name)(hidden), LEAKY_SLOPE)
        hidden = hidden.view(-1, 256, 4, 4)
        for name, *_ in _UP:
            hidden = getattr(self, name)(hidden)
            if name != "deconv0":
                hidden = nn.functional.leaky_relu(hidden, LEAKY_SLOPE)
        return hidden


class Generator:
    """A frozen DGN that renders latents as RGB images in [0, 1] scale (not clipped).

    Attributes
    ----------
    description : str
    weights_sha256 : str or None
        None for random weights.
    is_random : bool
    """

    def __init__(self, module, description, weights_sha256, device="cpu"):
        self.description = description
        self.weights_sha256 = weights_sha256
        self.is_random = weights_sha256 is None
        self.device = torch.device(device)
        self._module = module.to(self.device).eval().requires_grad_(False)
        mean_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], device=self.device) / 255
        self._mean_rgb = mean_rgb.view(1, 3, 1, 1)

    def __repr__(self):
        return f"Generator({self.description})"

    def render(self, latent, image_size):
        """Images of ``latent``: generated, centre-cropped to 224 px, BGR→RGB, mean added, /255.

        Parameters
        ----------
        latent : torch.Tensor, shape (B, 4096)
        image_size : int
            Output side; the 224-px crop is resized (bilinear, antialiased) when it differs.

        Returns
        -------
        torch.Tensor, shape (B, 3, image_size, image_size)
            RGB on the [0, 1] scale, unclipped: the encoder sees what the generator made, as in
            the lab's pipeline; callers clip for display.
        """
        bgr = self._module(latent.to(self.device))
        margin = (OUTPUT_SIZE - CROP_SIZE) // 2
        crop = bgr[:, :, margin:margin + CROP_SIZE, margin:margin + CROP_SIZE]
        rgb = crop.flip(1) / 255 + self._mean_rgb
        if image_size != CROP_SIZE:
            rgb = nn.functional.interpolate(rgb, size=(image_size, image_size), mode="bilinear",
                                            antialias=True, align_corners=False)
        return rgb


def load_generator(path, device="cpu"):
    """The lab's DGN generator from a state-dict file (loaded with ``weights_only=True``).

    Keys may be the layer names (``defc7.weight`` …) or the positions in the lab's
    ``nn.Sequential`` containers (``defc.0.weight`` …), or both (the same tensors twice).

    Raises
    ------
    BidsReconError
        The file is missing, unreadable, or does not hold this architecture (the message names
        the missing and unexpected keys).
    """
    what = "DGN generator weights (fc7 generator of Dosovitskiy & Brox 2016)"
    state_dict = load_state_dict_file(path, what)
    renamed = {}
    for key, value in state_dict.items():
        container, _, parameter = key.rpartition(".")
        renamed.setdefault(f"{_SEQUENTIAL_ALIASES.get(container, container)}.{parameter}", value)
    module = build_with_weights(DGNGenerator, renamed, path, what)
    return Generator(module, f"DGN generator, weights {Path(path).name}", file_sha256(path), device)


#: SD, in 0-255 units, of a random generator's output for a half-normal latent: about a natural
#: image's. torch's default initialisation alone would give nearly flat grey images.
RANDOM_OUTPUT_SD = 60.0


def random_generator(seed=0, device="cpu"):
    """A DGN generator with seeded random weights, for tests only.

    Biases are zero, so that the image depends on the latent rather than on a fixed pattern of
    random biases, and the last layer is rescaled so that images have a natural image's contrast.
    """
    module = seeded_init(DGNGenerator, seed)
    probe = torch.randn((4, LATENT_SIZE), generator=torch.Generator().manual_seed(seed)).abs()
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
        module.deconv0.weight *= RANDOM_OUTPUT_SD / module(probe).std()
    return Generator(module, f"DGN generator, random weights (seed={seed}), for tests only",
                     None, device)


def read_latent_bound(value):
    """An upper bound of the latent: a number, or a text file of 4,096 numbers (one per unit).

    The lab bounds each unit at 3 SD of AlexNet's fc7 activations over natural images.

    Returns
    -------
    float or ndarray of shape (4096,)
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    if not Path(value).is_file():
        raise BidsReconError(f"Latent bound {value} is neither a number nor a file.",
                             EXIT_INPUT_MISSING)
    try:
        bound = np.loadtxt(value, dtype=np.float64).ravel()
    except ValueError as error:
        raise BidsReconError(f"Cannot read latent bounds from {value}: {error}",
                             EXIT_INPUT_MISSING) from error
    if bound.shape != (LATENT_SIZE,):
        raise BidsReconError(f"Expected {LATENT_SIZE} latent bounds in {value} (one per unit), "
                             f"got {bound.size}.", EXIT_INPUT_MISSING)
    return bound
