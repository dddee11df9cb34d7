"""The paper's feature-matching loss: Σ_l w_l ‖φ_l(x) − f̂_l‖², w_l ∝ 1/‖f̂_l‖²."""
import warnings

import numpy as np
import torch


def layer_weights(targets, first_item=0):
    """Per-item layer weights w_l ∝ 1/‖f̂_l‖², normalised to sum to 1 over layers.

    A layer whose target is all zeros for an item would get an infinite weight (the known
    failure that produces black images); it gets weight 0 instead, with a warning.

    Parameters
    ----------
    targets : dict of str to array-like or torch.Tensor, each of shape (n_items, ...)
        Target features by layer; tensors stay on their device.
    first_item : int, default=0
        Number of the first item in messages (for a batch of a larger set).

    Returns
    -------
    dict of str to torch.Tensor, each of shape (n_items,), float32
    """
    names = list(targets)
    squared_norms = np.stack([_squared_norms(targets[name]) for name in names])  # (layers, items)
    zero = squared_norms == 0
    for name, zero_items in zip(names, zero):
        if zero_items.any():
            warnings.warn(f"Target features of layer {name!r} are all zero for item(s) "
                          f"{(first_item + np.flatnonzero(zero_items)).tolist()}; that layer gets "
                          "weight 0.",
                          stacklevel=2)
    empty_items = np.flatnonzero(zero.all(axis=0))
    if empty_items.size:
        raise ValueError(f"Target features are all zero in every layer for item(s) "
                         f"{(first_item + empty_items).tolist()}: there is nothing to reconstruct.")
    inverse = np.divide(1.0, squared_norms, out=np.zeros_like(squared_norms), where=~zero)
    weights = inverse / inverse.sum(axis=0)
    return {name: torch.as_tensor(weights[i], dtype=torch.float32)
            for i, name in enumerate(names)}


def pixel_weights(pixels, weight, targets):
    """Per-item weight of the pixel term, as if the pixels were one more layer weighted ``weight``.

    A layer's weight is ``u_l / Σ u`` with ``u_l = 1/‖f̂_l‖²`` (:func:`layer_weights`); the pixel
    term gets ``weight · u_p / Σ u`` with ``u_p = 1/‖p̂ − mean(p̂)‖²``, its contrast energy (the
    pixels' mean brightness would otherwise dominate their norm). So ``weight`` = 1 counts the
    pixels' relative error as much as one layer's. A flat pixel target gets weight 0.

    Parameters
    ----------
    pixels : torch.Tensor, shape (n_items, 3, s, s)
    weight : float
    targets : dict of str to array-like or torch.Tensor, each of shape (n_items, ...)
        The feature targets (:func:`layer_weights`'s input).

    Returns
    -------
    torch.Tensor, shape (n_items,), float32
    """
    squared_norms = np.stack([_squared_norms(value) for value in targets.values()])
    inverse_sum = np.divide(1.0, squared_norms, out=np.zeros_like(squared_norms), where=squared_norms > 0).sum(0)
    flat = torch.as_tensor(pixels).detach().flatten(1).double().cpu()
    energy = (flat - flat.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).numpy()
    weights = np.divide(weight, energy * inverse_sum, out=np.zeros_like(energy), where=energy * inverse_sum > 0)
    return torch.as_tensor(weights, dtype=torch.float32)


def total_variation(images):
    """Sum of squared differences of vertically and horizontally neighbouring pixels, per item."""
    vertical = (images[..., 1:, :] - images[..., :-1, :]).pow(2).flatten(1).sum(1)
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).pow(2).flatten(1).sum(1)
    return vertical + horizontal


def _squared_norms(features):
    """‖item‖² per item, summed in float64 on the features' own device (a GPU does it in
    milliseconds; the CPU in one pass)."""
    features = torch.as_tensor(features).detach()
    if features.device.type == "mps":  # Apple's GPUs have no float64
        features = features.cpu()
    norms = torch.linalg.vector_norm(features.flatten(1), dim=1, dtype=torch.float64)
    return (norms ** 2).cpu().numpy()


def feature_loss(features, targets, weights):
    """Weighted squared distance between features and targets, one value per item.

    Parameters
    ----------
    features, targets : dict of str to torch.Tensor, each of shape (n_items, ...)
    weights : dict of str to torch.Tensor, each of shape (n_items,)

    Returns
    -------
    torch.Tensor, shape (n_items,)
    """
    per_layer = [weights[name] * (features[name] - targets[name]).flatten(1).pow(2).sum(1)
                 for name in targets]
    return torch.stack(per_layer).sum(0)


def gradient_offsets(targets, weights):
    """``−2 w_l f̂_l`` per layer: with it, a layer's loss gradient is one fused multiply-add.

    Parameters
    ----------
    targets : dict of str to torch.Tensor, each of shape (n_items, ...)
    weights : dict of str to torch.Tensor, each of shape (n_items,)

    Returns
    -------
    dict of str to torch.Tensor, the targets' shapes
    """
    return {name: target * (-2 * _per_item(weights[name], target)) for name, target in targets.items()}


def feature_loss_and_output_gradients(features, offsets, weights):
    """The loss of :func:`feature_loss` and its gradient with respect to each layer's features.

    The gradient of ``w_l ‖φ_l − f̂_l‖²`` is ``g_l = 2 w_l φ_l + o_l`` with ``o_l = −2 w_l f̂_l``
    (:func:`gradient_offsets`), one ``addcmul`` that reads each feature map once, and the loss is
    ``‖g_l‖² / (4 w_l)``. Handing the gradients to ``torch.autograd.grad`` with every layer's
    features as outputs (one backward pass; the engine adds each layer's share where the pass
    reaches it) avoids differentiating the loss expression. These passes over the feature maps
    are the loop's overhead over a bare forward and backward of the encoder: on a CPU they are
    bound by memory bandwidth, so each one saved counts.

    Parameters
    ----------
    features : dict of str to torch.Tensor, each of shape (n_items, ...), part of a graph
    offsets : dict of str to torch.Tensor, same shapes, from :func:`gradient_offsets`
    weights : dict of str to torch.Tensor, each of shape (n_items,)

    Returns
    -------
    loss : torch.Tensor, shape (n_items,), no graph
    output_gradients : dict of str to torch.Tensor, the gradient of ``loss.sum()`` with respect
        to ``features[name]``
    """
    loss, gradients = 0, {}
    with torch.no_grad():
        for name, offset in offsets.items():
            feature, weight = features[name].detach(), weights[name]
            gradients[name] = torch.addcmul(offset, feature, _per_item(2 * weight, feature))
            # One read (vecdot would write a product first); a layer of weight 0 (an all-zero
            # target) has a zero gradient and adds nothing.
            norms = torch.linalg.vector_norm(gradients[name].flatten(1), dim=1)
            loss = loss + norms * norms / torch.where(weight > 0, 4 * weight, 1.0)
    return loss, gradients


def _per_item(values, like):
    """(n_items,) values shaped to broadcast over ``like`` (n_items, ...)."""
    return values.view((-1,) + (1,) * (like.ndim - 1))
