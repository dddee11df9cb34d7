"""The reconstruction stage: decoded features in, images and a description of how they were made out.

The decoded features are corrected (:mod:`bidsrecon.recon.correction`), then inverted through
the encoder (:func:`bidsrecon.recon.invert.reconstruct`), started from and held near the decoded
pixels when the decoder decoded them (the ``pixels`` pseudo-layer, :mod:`bidsrecon.decoding.pixels`).
"""
from dataclasses import dataclass

import numpy as np

from bidsrecon.decoding.pixels import PIXEL_LAYER
from bidsrecon.images import to_uint8
from bidsrecon.recon.correction import correct_features
from bidsrecon.recon.invert import reconstruct
from bidsrecon.recon.settings import SETTINGS, describe_settings


@dataclass
class Reconstruction:
    """Images of every item and what made them."""

    images: np.ndarray  # float32 (n_items, size, size, 3) in [0, 1]
    description: dict  # optimiser, its settings, start, weights, correction, device (JSON-ready)
    snapshots: dict  # "iter-NNNN" -> uint8 (n_items, size, size, 3); empty without snapshots


def reconstruct_decoded(features, encoder, *, image_size, optimiser="lbfgs", iterations=200, correction="spread",
                        pixel_weight=100.0, tv_weight=3.0, start="pixels", jitter=0, clamp=True, coarse_factor=2,
                        generator=None, latent_max=None, seed=0, batch_size=8, mixed_precision=False,
                        snapshot_every=0):
    """Reconstruct every item of ``features``.

    Parameters
    ----------
    features : dict
        ``decoded`` (by layer, the ``pixels`` pseudo-layer among them when decoded) and the
        training statistics the correction needs (``train_mean``, ``train_spread``,
        ``feature_std``), as the decoding stage saves them.
    encoder : bidsrecon.encoders.base.Encoder
        Its device is where the work runs.
    image_size : int
    optimiser : {"lbfgs", "gd", "generator"}
    iterations : int
    correction : str
        :func:`bidsrecon.recon.correction.correct_features`'s method.
    pixel_weight, tv_weight : float
        Weights of the decoded pixels' term and of total variation (need decoded pixels).
    start : {"pixels", "flat", "noise"}
        The decoded pixels (when there are any and the optimiser works on pixels), the paper's
        flat mean colour, or uniform noise.
    jitter : int
        ``gd``: the image's random shift per iteration, in pixels.
    clamp : bool
        ``gd``: keep pixels in [0, 1] after each step.
    coarse_factor : int
        ``lbfgs``: optimise an image this many times smaller, upsampled before the encoder.
    generator : bidsrecon.recon.generator.Generator, optional
        Needed by the ``generator`` optimiser.
    latent_max : float or ndarray, optional
        ``generator``: the latent's upper bound.
    seed, batch_size, mixed_precision, snapshot_every :
        As for :func:`bidsrecon.recon.invert.reconstruct`.

    Returns
    -------
    Reconstruction
    """
    stats = {name: features[name] for name in ("train_mean", "train_spread", "feature_std") if name in features}
    decoded = dict(features["decoded"])
    # The decoded pixels are taken as the ridge gives them, not rescaled: their shrinkage towards
    # the mean image is what a least-squares estimate of uncertain pixels should do (rescaled,
    # SSIM fell 0.316 -> 0.298 on natural images and 0.688 -> 0.370 on letters, bench/validity.py).
    # Decoders saved before the pixels pseudo-layer existed decode none: the paper's start then.
    pixels = decoded.pop(PIXEL_LAYER, None)
    targets = correct_features(decoded, stats, correction)
    use_pixels = pixels is not None and optimiser != "generator"
    pixel_options = dict(pixel_target=pixels if use_pixels else None,
                         pixel_weight=pixel_weight if use_pixels else 0.0,
                         tv_weight=tv_weight if use_pixels else 0.0,
                         start=start if use_pixels or start == "noise" else "flat")
    settings = {"n_iter": iterations}
    if optimiser == "generator":
        if latent_max is not None:
            settings["latent_max"] = latent_max
    elif optimiser == "gd":
        settings.update(jitter=jitter, clamp=clamp)
    else:
        settings["scale"] = coarse_factor
    settings = SETTINGS[optimiser](**settings)
    n_items = len(next(iter(targets.values())))
    snapshots = {}

    def keep_snapshot(iteration, items, images):
        key = f"iter-{iteration:04d}"
        if key not in snapshots:
            snapshots[key] = np.zeros((n_items,) + images.shape[1:], np.uint8)
        snapshots[key][items] = to_uint8(images)

    images = reconstruct(encoder, targets, image_size, optimiser=optimiser, settings=settings, generator=generator,
                         seed=seed, batch_size=batch_size, mixed_precision=mixed_precision,
                         snapshot_every=snapshot_every, on_snapshot=keep_snapshot, **pixel_options)
    description = {**describe_settings(optimiser, settings), "device": encoder.device.type,
                   "mixed_precision": mixed_precision, "start": pixel_options["start"],
                   "pixel_weight": pixel_options["pixel_weight"], "tv_weight": pixel_options["tv_weight"],
                   "feature_correction": correction}
    if generator is not None:
        description.update(generator=generator.description, generator_sha256=generator.weights_sha256)
    return Reconstruction(images.astype(np.float32), description, snapshots)
