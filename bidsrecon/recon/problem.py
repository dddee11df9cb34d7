"""The loss of one batch of items, and its gradient with respect to the images' parameters.

:class:`_Problem` holds a batch's target features as gradient offsets, with the layers' weights
(and the pixel and total-variation terms' when a decoded pixel image is given), and makes the
``objective(variable, items)`` the optimisers of :mod:`bidsrecon.recon.renderers` minimise: on
the CPU each item is evaluated alone, on one thread, so that its loss and gradient depend
neither on the number of threads nor on its batch-mates. :func:`_cudnn_tuning` sets cuDNN's
benchmark mode for a block.
"""
import contextlib

import torch

from bidsrecon.decoding.pixels import PIXEL_LAYER
from bidsrecon.parallel import map_tasks
from bidsrecon.recon.loss import (
    feature_loss_and_output_gradients,
    gradient_offsets,
    layer_weights,
    pixel_weights,
    total_variation,
)


class _Problem:
    """The loss of one batch, and its gradient with respect to the images' parameters."""

    def __init__(self, encoder, targets, mixed_precision, first_item=0, pixel_weight=0.0, tv_weight=0.0):
        self.encoder = encoder
        self.device = encoder.device
        targets = {name: value.to(self.device) for name, value in targets.items()}
        pixels = targets.pop(PIXEL_LAYER, None)
        # Per item, so computing them batch by batch (on the device) changes nothing.
        weights = layer_weights(targets, first_item)
        self.pixel_size, self.tv_weights = None, None
        if pixels is not None:
            self.tv_weights = pixel_weights(pixels, tv_weight, targets).to(self.device) if tv_weight else None
            weights[PIXEL_LAYER] = pixel_weights(pixels, pixel_weight, targets)
            targets[PIXEL_LAYER] = pixels
            self.pixel_size = pixels.shape[-1]
        self.weights = {name: value.to(self.device) for name, value in weights.items()}
        # Held instead of the targets (on a GPU in place of their copy; on the CPU, where the
        # targets are views of the caller's, one batch of features more): the loss gradient
        # is then one pass over the features.
        self.offsets = gradient_offsets(targets, self.weights)
        self.n_items = len(next(iter(targets.values())))
        self.mixed_precision = mixed_precision

    def objective(self, render, coarse=None):
        """``objective(variable, items)`` → (loss per item, gradient), images = render(variable).

        The pixel term reads ``coarse(variable)`` pooled to the decoded small image's size, where
        ``coarse`` is given (an image optimised at a smaller size, before its upsampling), else the
        rendered image: pooling an upsampled image blurs it, and matching a blurred image to the
        small image asks for a sharpened one.

        On the CPU each item is evaluated alone, as one task of :mod:`bidsrecon.parallel` (one
        thread each, the items in parallel): its loss and gradient then depend neither on the
        number of threads (oneDNN's backward pass splits its sums by it) nor on its batch-mates.
        A GPU evaluates the items together.
        """
        layers = [name for name in self.offsets if name != PIXEL_LAYER]
        outputs = list(self.offsets)
        if hasattr(self.encoder, "prepare"):  # trace in this thread, before the tasks share it
            self.encoder.prepare(layers)

        def evaluate_together(variable, items):
            offsets, weights = self.offsets, self.weights
            whole_batch = len(items) == self.n_items
            if len(items) == 1 and not whole_batch:  # views, not copies, of one item's offsets
                item = int(items[0])
                offsets = {name: value[item:item + 1] for name, value in offsets.items()}
                weights = {name: value[item:item + 1] for name, value in weights.items()}
            elif not whole_batch:  # a line search re-evaluating some items only
                offsets = {name: value[items] for name, value in offsets.items()}
                weights = {name: value[items] for name, value in weights.items()}
            variable = variable.detach().requires_grad_(True)
            # cuDNN times every algorithm on each new input shape (seconds for VGG19 in bfloat16),
            # and a line search re-evaluates any number of items: only the batch's shape is tuned.
            # (Not on the CPU, whose tasks would set that global flag from several threads.)
            tuning = (contextlib.nullcontext() if self.device.type == "cpu"
                      else _cudnn_tuning(torch.backends.cudnn.benchmark and whole_batch))
            with tuning, torch.enable_grad():
                image = render(variable)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.mixed_precision):
                    features = self.encoder.features(image, layers)
                features = {name: value.float() for name, value in features.items()}
                if self.pixel_size:
                    seen = image if coarse is None else coarse(variable)
                    features[PIXEL_LAYER] = torch.nn.functional.adaptive_avg_pool2d(seen.float(), self.pixel_size)
                loss, output_gradients = feature_loss_and_output_gradients(features, offsets, weights)
                extra_outputs, extra_gradients = [], []
                if self.tv_weights is not None:
                    tv_weights = self.tv_weights if whole_batch else self.tv_weights[items]
                    variation = total_variation(image.float())
                    loss = loss + tv_weights * variation.detach()
                    extra_outputs, extra_gradients = [variation], [tv_weights]
                (grad,) = torch.autograd.grad([features[name] for name in outputs] + extra_outputs, variable,
                                              grad_outputs=[output_gradients[name] for name in outputs]
                                              + extra_gradients)
            return loss, grad

        if self.device.type != "cpu":
            return evaluate_together

        def evaluate(variable, items):
            results = map_tasks(lambda position: evaluate_together(variable[position:position + 1],
                                                                   items[position:position + 1]),
                                range(len(items)))
            return torch.cat([loss for loss, _ in results]), torch.cat([grad for _, grad in results])

        return evaluate


@contextlib.contextmanager
def _cudnn_tuning(enabled):
    """``torch.backends.cudnn.benchmark`` set to ``enabled`` for the block, then restored."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
