"""Gradient descent with momentum and normalised gradients: the lab's ``icnn`` optimiser.

Each iteration (Shen et al. 2019; the lab's icnn defaults, REFERENCE.md §1):

1. the gradient of each item is divided by its mean absolute value, so the step size does not
   depend on the loss's scale;
2. ``direction = momentum · direction + gradient`` and ``variable -= lr_t · direction`` (icnn's
   and torch's SGD form; writing it ``v = momentum · v + lr_t · g; x -= v`` makes late steps
   ~9x larger, since the direction keeps the size of early gradients while lr_t falls), with
   the learning rate falling linearly as icnn's ``lr_t = lr_0 + t (lr_1 − lr_0) / n`` for
   ``t = 0 … n−1``;
3. ``shrink`` pulls the variable towards a centre (pixel decay towards the mean colour, or latent
   decay towards zero), ``smooth`` blurs it, and ``clamp`` keeps it in its bounds.

Items never interact: each has its own normalisation and direction.
"""
import torch


def linear_schedule(start, end, iteration, n_iter):
    """icnn's linear schedule at 1-based ``iteration``: ``start + t (end − start) / n_iter``,
    ``t = iteration − 1`` (so it starts at ``start`` and stops one step short of ``end``)."""
    return start + (end - start) * (iteration - 1) / n_iter


def minimise_momentum(objective, start, n_iter, *, lr, momentum, step_unit=1.0, jitter=0,
                      shrink=None, smooth=None, clamp=None, seed=0, on_iteration=None):
    """Minimise ``objective`` by normalised-gradient descent with momentum.

    Parameters
    ----------
    objective : callable
        ``objective(variable, items)`` returns ``(loss, grad)``, as for
        :func:`bidsrecon.recon.lbfgs.minimise_lbfgs` (here always for every item).
    start : torch.Tensor, shape (n_items, ...)
    n_iter : int
    lr : tuple of 2 floats
        Learning rate at the first and at the last iteration.
    momentum : float
    step_unit : float, default=1.0
        Size of a unit step in the variable's own scale (1/255 for pixels in [0, 1], as the
        lab's learning rates are in 0-255 pixel units).
    jitter : int, default=0
        Largest random shift, in pixels, of the (image) variable before each evaluation; the
        gradient is shifted back. 0 disables it.
    shrink, smooth : callable, optional
        ``shrink(variable, iteration)`` and ``smooth(variable, iteration)`` return the
        variable after decay and after blurring.
    clamp : tuple of 2 (float, tensor or None), optional
        Lower and upper bounds of the variable.
    seed : int, default=0
        Seed of the jitter.
    on_iteration : callable, optional
        ``on_iteration(iteration, variable, loss)`` after each iteration (1-based).

    Returns
    -------
    variable : torch.Tensor
    n_evaluations : float
        Passes over the batch: one per iteration.
    """
    variable = start.detach().clone()
    items = torch.arange(len(variable), device=variable.device)
    direction = torch.zeros_like(variable)
    shifts = torch.Generator().manual_seed(seed)
    for iteration in range(1, n_iter + 1):
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=shifts).tolist() if jitter else (0, 0)
        loss, grad = objective(torch.roll(variable, (dy, dx), dims=(-2, -1)) if jitter else variable, items)
        if jitter:
            grad = torch.roll(grad, (-dy, -dx), dims=(-2, -1))
        magnitude = grad.abs().flatten(1).mean(1).clamp(min=1e-30).view((-1,) + (1,) * (grad.ndim - 1))
        rate = linear_schedule(*lr, iteration, n_iter) * step_unit
        direction = momentum * direction + grad / magnitude
        variable = variable - rate * direction
        if shrink is not None:
            variable = shrink(variable, iteration)
        if smooth is not None:
            variable = smooth(variable, iteration)
        if clamp is not None:
            variable = torch.clamp(variable, *clamp)
        if on_iteration is not None:
            on_iteration(iteration, variable, loss.detach())
    return variable, float(n_iter)


def gaussian_blur(images, sigma):
    """Blur (B, C, H, W) images with a separable Gaussian of SD ``sigma`` pixels (reflected edges)."""
    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = torch.nn.functional.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
                                      groups=channels)
    return torch.nn.functional.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
                                      groups=channels)
