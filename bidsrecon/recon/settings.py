"""The settings of the three image optimisers of :func:`bidsrecon.recon.invert.reconstruct`.

One frozen dataclass per optimiser, its defaults the paper's (or the lab's icnn's):
:class:`LbfgsSettings` (``lbfgs``), :class:`PixelDescentSettings` (``gd``) and
:class:`GeneratorDescentSettings` (``generator``); :data:`SETTINGS` maps each optimiser to its
class, and :func:`describe_settings` writes them as JSON-ready data for the sidecars.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LbfgsSettings:
    """L-BFGS over pixels; the paper's defaults (see :mod:`bidsrecon.recon.lbfgs`)."""

    n_iter: int = 200
    #: The optimised image has image_size / scale pixels a side and is upsampled (bilinear) to
    #: image_size before the encoder: 1 optimises every pixel (the paper's).
    scale: int = 1


@dataclasses.dataclass(frozen=True)
class PixelDescentSettings:
    """Momentum descent over pixels; the lab's icnn defaults. Rates in 0-255 pixel units."""

    n_iter: int = 200
    lr_start: float = 2.0
    lr_end: float = 1e-10
    momentum: float = 0.9
    decay_start: float = 0.2
    decay_end: float = 1e-10
    blur_start: float = 2.0
    blur_end: float = 0.5
    jitter: int = 0
    #: Keep pixels in [0, 1] after each step (the lab's icnn does not clamp; the image saved is
    #: clipped either way).
    clamp: bool = True


@dataclasses.dataclass(frozen=True)
class GeneratorDescentSettings:
    """Momentum descent over a DGN generator's latent; the paper's defaults (Fig 2).

    ``latent_max`` is the upper bound of the latent: a number, a sequence of 4,096 (the lab
    uses 3 SD of AlexNet's fc7 activations per unit), or None for no upper bound.
    """

    n_iter: int = 200
    lr_start: float = 2.0
    lr_end: float = 1e-10
    momentum: float = 0.9
    latent_decay: float = 0.01
    latent_min: float = 0.0
    latent_max: object = None


SETTINGS = {"lbfgs": LbfgsSettings, "gd": PixelDescentSettings, "generator": GeneratorDescentSettings}


def describe_settings(optimiser, settings):
    """The optimiser and its settings as plain JSON-ready data, for sidecars."""
    values = dataclasses.asdict(settings)
    if values.get("latent_max") is not None and np.ndim(values["latent_max"]):
        values["latent_max"] = f"{np.size(values['latent_max'])} per-unit values"
    return {"optimiser": optimiser, **values}
