"""Memory of :func:`bidsrecon.decoding.stream.decode_features`, and how it fits a budget.

:func:`decoding_memory` models the bytes one pass over the training images takes for a group of
layers; :func:`plan_decoding` and :func:`plan_layer_groups` choose the batch size and the groups
of layers (one pass each) that fit a memory budget; :func:`budget_within` turns a memory limit
(``--mem``) into such a budget, given what this process already holds (:func:`resident_bytes`).
"""
import os

import numpy as np

from bidsrecon.errors import EXIT_BAD_ARGUMENTS, BidsReconError

#: Bytes per unit that decoding holds for each layer being accumulated besides its output: a
#: float32 centre and two float64 moment sums, and a float32 copy of the mean at the end.
_ACCUMULATOR_BYTES_PER_UNIT = 4 + 8 + 8 + 4
#: Encoder batches whose features are gathered before each sweep over the outputs. Every sweep
#: reads and writes all the decoded outputs (3 GB for 50 items of VGG19): on a CPU that sweep,
#: not the arithmetic, is the accumulation's cost, so fewer, larger sweeps are faster.
ACCUMULATED_BATCHES = 2
#: Left out of a memory limit for what :func:`decoding_memory` does not count (allocator slack).
#: 300 MB let ``bench/decode_scale.py`` at full scale peak 0.05-0.09 GB over its 8 GB limit.
MEMORY_MARGIN = 450_000_000


def decoding_memory(layer_units, layer_items, batch_size, cached=False):
    """Bytes :func:`decode_features` needs to accumulate a group of layers in one pass.

    The model: the outputs (float32, n_items per unit); per unit of the group, a float32
    centre, two float64 moment sums and a float32 mean (24 bytes); per image of a batch, the
    float32 features of the group (four times that with a cache: the batch is held as entries
    and as their stack, and the next batch is read ahead), plus the ``ACCUMULATED_BATCHES``
    batches gathered for one sweep of the outputs, and one float32 temporary of the largest
    layer of the group; and the encoder's forward, which holds about two activations of the
    largest layer it runs through at once.

    Parameters
    ----------
    layer_units : dict of str to int
        Units per image of *every* layer of the encoder, in network order (the forward to a
        layer runs through all the layers before it).
    layer_items : dict of str to int
        The group: items decoded per layer.
    batch_size : int
    cached : bool, default False

    Returns
    -------
    int
    """
    group_units = [layer_units[layer] for layer in layer_items]
    deepest = max(list(layer_units).index(layer) for layer in layer_items)
    largest_in_forward = max(list(layer_units.values())[:deepest + 1])
    outputs = sum(4 * n_items * layer_units[layer] for layer, n_items in layer_items.items())
    accumulators = _ACCUMULATOR_BYTES_PER_UNIT * sum(group_units)
    batch_features = 4 * batch_size * ((4 if cached else 1) * sum(group_units)
                                       + ACCUMULATED_BATCHES * sum(group_units)
                                       + max(group_units))
    forward = 4 * batch_size * 2 * largest_in_forward
    return int(outputs + accumulators + batch_features + forward)


def resident_bytes():
    """Resident memory of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def budget_within(limit_bytes):
    """Bytes :func:`decode_features` may add to what this process holds now, within a limit.

    Raises
    ------
    BidsReconError
        When the process already holds the limit (less the margin).
    """
    held = resident_bytes()
    budget = int(limit_bytes) - held - MEMORY_MARGIN
    if budget <= 0:
        raise BidsReconError(f"A memory limit of {limit_bytes / 1e9:g} GB is spent before decoding starts: "
                             f"this process already holds {held / 1e9:.2f} GB (samples, images, encoder). "
                             "Raise the limit (--mem).", EXIT_BAD_ARGUMENTS)
    return budget


def plan_decoding(layer_units, layer_items, batch_size, memory_budget, cached=False):
    """Batch size and layer groups for :func:`decode_features` under a memory budget.

    A smaller batch, down to a quarter of ``batch_size``, is preferred to a second pass over
    the images: a pass costs a whole forward of the training set, a smaller batch only some of
    the encoder's throughput (and, on a CPU, the accumulation's: each batch reads and writes
    every output once).

    Returns
    -------
    batch_size : int
    groups : list of list of str
        As :func:`plan_layer_groups`.
    """
    for smaller in range(batch_size, max(1, batch_size // 4) - 1, -1):
        try:
            groups = plan_layer_groups(layer_units, layer_items, smaller, memory_budget, cached)
        except BidsReconError:
            continue
        if len(groups) == 1:
            return smaller, groups
    return batch_size, plan_layer_groups(layer_units, layer_items, batch_size, memory_budget,
                                         cached)


def plan_layer_groups(layer_units, layer_items, batch_size, memory_budget, cached=False):
    """Split layers into groups, in network order, that each fit the memory budget.

    The outputs of every layer are counted in every group (they are kept until the end); the
    other terms of :func:`decoding_memory` only while the group is accumulated.

    Parameters
    ----------
    layer_units : dict of str to int
        Units per image of every layer of the encoder, in network order.
    layer_items : dict of str to int
        Layers to decode and their number of items.
    batch_size : int
    memory_budget : int
        Bytes.
    cached : bool, default False

    Returns
    -------
    list of list of str

    Raises
    ------
    BidsReconError
        When the outputs alone, or one layer with them, exceed the budget.
    """
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)) \
            or memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes; got "
                         f"{memory_budget!r}.")
    outputs = sum(4 * n_items * layer_units[layer] for layer, n_items in layer_items.items())

    def extra(group):
        return decoding_memory(layer_units, {layer: layer_items[layer] for layer in group},
                               batch_size, cached) - sum(
            4 * layer_items[layer] * layer_units[layer] for layer in group)

    groups = []
    for layer in [layer for layer in layer_units if layer in layer_items]:
        if groups and outputs + extra(groups[-1] + [layer]) <= memory_budget:
            groups[-1].append(layer)
            continue
        if outputs + extra([layer]) > memory_budget:
            raise BidsReconError(
                f"A memory budget of {memory_budget / 2**30:.2f} GiB is too small to decode "
                f"layer {layer!r}: the decoded features alone take {outputs / 2**30:.2f} GiB "
                f"and the layer needs {outputs + extra([layer]):,} bytes with a batch of "
                f"{batch_size}. Raise the memory limit or decode fewer layers or items.",
                EXIT_BAD_ARGUMENTS)
        groups.append([layer])
    return groups
