"""L-BFGS with one curvature history and one line search per item: a batch of independent problems.

torch.optim.LBFGS treats a batch as one problem (one history, one step length for all items), so
an item's result would depend on its batch-mates. Here every item has its own history, its own
Hessian scale and its own backtracking line search (Armijo's sufficient decrease); the batch only
shares the forward and backward passes. An item whose step is rejected is re-evaluated alone with
the other rejected items, so a backtrack costs a pass over those items only. An item whose line search
fails forgets its curvature pairs and restarts from steepest descent; one that fails again with no
pairs has stopped (no step along the gradient lowers its loss) and is not evaluated any more, as
scipy's L-BFGS-B ends a run whose line search fails twice. Without the stop, an item whose loss
change is lost in rounding (bfloat16 features) costs a whole line search every iteration.

On a GPU every boolean-mask index waits for the device (its size is needed on the host), and at a
small batch those waits, not the arithmetic, set the pace. An iteration in which every item's
first step is accepted (almost all of them) therefore waits once: for that check. Masks are
applied with ``torch.where`` and ``masked_fill_``, items picked by index tensors, and the set of
items still moving is rebuilt only after a step was rejected. The numbers are the same.

Nocedal & Wright, Numerical Optimization (2nd ed.), algorithm 7.4 (two-loop recursion) and 3.1
(backtracking); scipy's L-BFGS-B, the paper's optimiser, keeps 10 pairs as here.
"""
import torch

#: Curvature pairs kept per item (scipy's L-BFGS-B default).
HISTORY_SIZE = 10
#: Armijo constant: accept a step that achieves this fraction of the predicted decrease.
SUFFICIENT_DECREASE = 1e-4
#: Halvings of a rejected step before the item waits for the next iteration without moving.
MAX_BACKTRACKS = 10
#: A pair with sᵀy below this is not positive curvature and is not stored.
MIN_CURVATURE = 1e-10


def minimise_lbfgs(objective, start, n_iter, on_iteration=None):
    """Minimise ``objective`` from ``start`` for ``n_iter`` iterations, each item on its own.

    Parameters
    ----------
    objective : callable
        ``objective(variable, items)`` returns ``(loss, grad)`` for the rows ``items`` (a
        LongTensor of item indices) of the batch at ``variable`` (those rows only): ``loss``
        of shape (n,), ``grad`` of the variable's shape.
    start : torch.Tensor, shape (n_items, ...)
    n_iter : int
    on_iteration : callable, optional
        Called as ``on_iteration(iteration, variable, loss)`` after each iteration (1-based).

    Returns
    -------
    variable : torch.Tensor
        The final point, shape of ``start``.
    n_evaluations : int
        Items evaluated in total, divided by the batch size: passes over the whole batch.
    """
    shape = start.shape
    n_items = shape[0]
    everyone = torch.arange(n_items, device=start.device)
    x = start.detach().reshape(n_items, -1).clone()
    loss, grad = _evaluate(objective, x, everyone, shape)
    evaluated = n_items
    steps, changes, inverse_curvatures = [], [], []
    scale = torch.ones(n_items, device=x.device, dtype=x.dtype)
    active = torch.ones(n_items, dtype=torch.bool, device=x.device)
    movers = everyone

    for iteration in range(1, n_iter + 1):
        if len(movers):
            x, loss, grad, failed, fresh, n_evaluated = _iterate(
                objective, x, loss, grad, movers, shape, steps, changes, inverse_curvatures, scale)
            evaluated += n_evaluated
            if failed is not None:  # a step was rejected: restart or stop the items whose search failed
                restart = failed & ~fresh
                for pairs in (steps, changes, inverse_curvatures):
                    for pair in pairs:
                        pair.masked_fill_(restart if pair.dim() == 1 else restart[:, None], 0)
                scale.masked_fill_(restart, 1)
                active &= ~(failed & fresh)
                movers = everyone[active]
        if on_iteration is not None:
            on_iteration(iteration, x.reshape(shape), loss)
    return x.reshape(shape), evaluated / n_items


def _iterate(objective, x, loss, grad, movers, shape, steps, changes, inverse_curvatures, scale):
    """One iteration for the items ``movers``: direction, line search, new curvature pair.

    Appends the pair to the history (in place) and returns the new ``x, loss, grad``, masks of
    the items whose line search failed (they stay where they were; None when every first step
    was accepted, so none did) and of those that had no curvature pairs to start from, and the
    number of items evaluated.
    """
    n_items = len(x)
    direction = -_two_loop(grad, steps, changes, inverse_curvatures, scale)
    slope = (grad * direction).sum(1)
    # A history gone stale can point uphill: such an item restarts from steepest descent.
    uphill = slope >= 0
    direction = torch.where(uphill[:, None], -grad, direction)
    slope = torch.where(uphill, -(grad * grad).sum(1), slope)
    # Without curvature pairs (the first iteration, or after a restart) the step is scaled down
    # to at most unit length in L1, as torch.optim.LBFGS does.
    fresh = ~_has_history(inverse_curvatures, x)
    step = torch.where(fresh, torch.clamp(1.0 / grad.abs().sum(1), max=1.0), 1.0)

    new_x, new_loss, new_grad = x.clone(), loss.clone(), grad.clone()
    pending, evaluated, failed = movers, 0, None
    for backtrack in range(MAX_BACKTRACKS + 1):
        trial = x[pending] + step[pending, None] * direction[pending]
        trial_loss, trial_grad = _evaluate(objective, trial, pending, shape)
        evaluated += len(pending)
        accepted = trial_loss <= loss[pending] + SUFFICIENT_DECREASE * step[pending] * slope[pending]
        if backtrack == 0 and bool(accepted.all()):  # the usual case, and the iteration's one wait
            new_x[pending], new_loss[pending], new_grad[pending] = trial, trial_loss, trial_grad
            break
        done = pending[accepted]
        new_x[done], new_loss[done], new_grad[done] = (
            trial[accepted], trial_loss[accepted], trial_grad[accepted])
        pending = pending[~accepted]
        failed = torch.zeros(n_items, dtype=torch.bool, device=x.device)
        if not len(pending):
            break
        step[pending] *= 0.5
    if failed is not None:
        failed[pending] = True

    step_taken, grad_change = new_x - x, new_grad - grad
    curvature = (step_taken * grad_change).sum(1)
    useful = curvature > MIN_CURVATURE
    keep = useful[:, None]
    steps.append(torch.where(keep, step_taken, 0))
    changes.append(torch.where(keep, grad_change, 0))
    inverse_curvatures.append(torch.where(useful, 1.0 / curvature.clamp(min=MIN_CURVATURE), 0))
    scale.copy_(torch.where(useful, curvature / (grad_change * grad_change).sum(1).clamp(min=1e-30), scale))
    if len(steps) > HISTORY_SIZE:
        del steps[0], changes[0], inverse_curvatures[0]
    return new_x, new_loss, new_grad, failed, fresh, evaluated


def _has_history(inverse_curvatures, like):
    """Per item, whether any stored curvature pair is in use (a pair not stored has ρ = 0)."""
    if not inverse_curvatures:
        return torch.zeros(len(like), dtype=torch.bool, device=like.device)
    return torch.stack(inverse_curvatures).gt(0).any(0)


def _evaluate(objective, flat, items, shape):
    loss, grad = objective(flat.reshape((len(items),) + shape[1:]), items)
    return loss.detach(), grad.detach().reshape(len(items), -1)


def _two_loop(grad, steps, changes, inverse_curvatures, scale):
    """H·grad for every item at once, H the L-BFGS inverse-Hessian estimate; all (n_items, D)."""
    q = grad.clone()
    alphas = []
    for s, y, rho in zip(reversed(steps), reversed(changes), reversed(inverse_curvatures)):
        alpha = rho * (s * q).sum(1)
        q -= alpha[:, None] * y
        alphas.append(alpha)
    r = scale[:, None] * q
    for s, y, rho, alpha in zip(steps, changes, inverse_curvatures, reversed(alphas)):
        beta = rho * (y * r).sum(1)
        r += (alpha - beta)[:, None] * s
    return r
