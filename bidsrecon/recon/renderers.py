"""What each optimiser of :func:`bidsrecon.recon.invert.reconstruct` varies, and how it becomes
an image.

``lbfgs`` (:class:`_PixelLbfgs`): L-BFGS over the logits of the pixels, optionally of a smaller
image upsampled before the encoder (the pixel term then reads the smaller image). ``gd`` (:class:`_PixelDescent`): momentum descent over the
pixels, with decay towards the mean colour and blur. ``generator`` (:class:`_GeneratorDescent`):
momentum descent over a DGN generator's latent. Each takes a :class:`bidsrecon.recon.problem._Problem`
and its settings (:mod:`bidsrecon.recon.settings`), optimises from the start logits and gives the
images as float32 arrays (n_items, H, W, 3) in [0, 1]; :data:`_RENDERERS` maps the optimiser's
name to its class.
"""
import numpy as np
import torch

from bidsrecon.recon.descent import gaussian_blur, linear_schedule, minimise_momentum
from bidsrecon.recon.generator import LATENT_SIZE
from bidsrecon.recon.lbfgs import minimise_lbfgs

#: Image size at which the blur and jitter settings are given in pixels (the paper's 224).
REFERENCE_SIZE = 224


class _PixelLbfgs:
    """L-BFGS over the logits of the pixels."""

    def __init__(self, problem, image_size, settings, generator):
        self.problem, self.image_size, self.settings = problem, image_size, settings

    def render(self, logits):
        pixels = torch.sigmoid(logits)
        if self.settings.scale == 1:
            return pixels
        return torch.nn.functional.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear",
                                               align_corners=False)

    def optimise(self, start_logits, seed, on_iteration):
        start = start_logits.to(self.problem.device)
        if self.settings.scale > 1:
            start = torch.logit(torch.nn.functional.adaptive_avg_pool2d(
                torch.sigmoid(start), self.image_size // self.settings.scale))
        coarse = torch.sigmoid if self.settings.scale > 1 else None
        variable, _ = minimise_lbfgs(self.problem.objective(self.render, coarse), start, self.settings.n_iter,
                                     on_iteration)
        return variable

    def images(self, variable):
        with torch.no_grad():
            return _to_numpy(self.render(variable))


class _PixelDescent:
    """Momentum descent over pixels in [0, 1], with decay towards the mean colour and blur."""

    def __init__(self, problem, image_size, settings, generator):
        self.problem, self.image_size, self.settings = problem, image_size, settings
        self.mean = torch.tensor(problem.encoder.mean_rgb, device=problem.device).view(1, 3, 1, 1)
        self.scale = image_size / REFERENCE_SIZE

    def optimise(self, start_logits, seed, on_iteration):
        s = self.settings
        start = torch.sigmoid(start_logits).to(self.problem.device)

        def shrink(pixels, iteration):
            decay = linear_schedule(s.decay_start, s.decay_end, iteration, s.n_iter)
            return self.mean + (1 - decay) * (pixels - self.mean)

        def smooth(pixels, iteration):
            return gaussian_blur(pixels, self.scale * linear_schedule(
                s.blur_start, s.blur_end, iteration, s.n_iter))

        variable, _ = minimise_momentum(
            self.problem.objective(lambda pixels: pixels), start, s.n_iter,
            lr=(s.lr_start, s.lr_end), momentum=s.momentum, step_unit=1 / 255,
            jitter=round(s.jitter * self.scale), shrink=shrink, smooth=smooth, clamp=(0.0, 1.0) if s.clamp else None,
            seed=seed, on_iteration=on_iteration)
        return variable

    def images(self, variable):
        return _to_numpy(variable.clamp(0.0, 1.0))  # unclamped descent may leave the range


class _GeneratorDescent:
    """Momentum descent over a DGN generator's latent."""

    def __init__(self, problem, image_size, settings, generator):
        self.problem, self.image_size, self.settings = problem, image_size, settings
        self.generator = generator

    def render(self, latent):
        return self.generator.render(latent, self.image_size)

    def optimise(self, start_logits, seed, on_iteration):
        """Start from a latent of zeros (the paper's); ``start_logits`` (pixels) is not used."""
        s = self.settings
        device = self.problem.device
        # torch.clamp takes two numbers or two tensors: a per-unit bound makes both tensors.
        lower, upper = s.latent_min, s.latent_max
        if upper is not None and np.ndim(upper):
            upper = torch.as_tensor(np.asarray(upper, dtype=np.float32), device=device)
            lower = torch.full_like(upper, lower)
        elif upper is not None:
            upper = float(upper)
        start = torch.zeros((self.problem.n_items, LATENT_SIZE), device=device)
        variable, _ = minimise_momentum(
            self.problem.objective(self.render), start, s.n_iter, lr=(s.lr_start, s.lr_end),
            momentum=s.momentum, shrink=lambda latent, _: (1 - s.latent_decay) * latent,
            clamp=(lower, upper), seed=seed, on_iteration=on_iteration)
        return variable

    def images(self, variable):
        with torch.no_grad():
            return _to_numpy(self.render(variable).clamp(0, 1))


_RENDERERS = {"lbfgs": _PixelLbfgs, "gd": _PixelDescent, "generator": _GeneratorDescent}


def _to_numpy(images):
    return images.detach().float().permute(0, 2, 3, 1).cpu().numpy()
