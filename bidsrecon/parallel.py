"""Parallel work whose numbers do not depend on the number of threads.

A multithreaded numeric kernel splits its work by the number of threads it has, and where it
splits a sum, the rounding changes with it. Measured with the libraries we ship (torch 2.14 with
oneDNN and MKL, numpy's OpenBLAS): oneDNN's convolution backward pass, torch's fully connected
layers, OpenBLAS's matrix products, eigendecomposition and solver, and torch's sums to one value
all give other bits on 1 thread than on 2. A batched convolution also rounds an image's features
differently with other batch-mates. So the same run with ``--nprocs 1`` and ``--nprocs 2``
(whose threads follow ``--nprocs``) gave other metrics and reconstructions.

Here the heavy steps are split into tasks fixed by the data alone (one image through the
encoder, one item of a reconstruction, one cross-validation fold, one block of rows or
columns), each computed by a numeric library on one thread; only the tasks run in parallel.
The bits then depend on the data, not on the thread count, and the speed still grows with
the threads while there are at least as many tasks as threads (a lone item, or a line search
re-evaluating two items, leaves the other threads idle: the price of that guarantee).

Usage::

    with task_threads(4):                  # numeric libraries on one thread each, 4 workers
        results = map_tasks(work, items)   # results in the order of ``items``

Library functions that parallelise open a ``task_threads()`` block themselves (its size is
then ``torch.get_num_threads()``, the caller's setting); inside an open block they use its
workers. Outside any block, :func:`map_tasks` runs the tasks in turn with the caller's own
thread settings. One thread at a time opens blocks (the process's libraries have one setting).
"""
import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from threadpoolctl import threadpool_limits

_active = {"pool": None, "workers": 1}
_worker = threading.local()


def _start_worker():
    _worker.busy = True
    torch.set_num_threads(1)  # OpenMP's thread count is per thread: set in each worker


@contextlib.contextmanager
def task_threads(n_threads=None):
    """Run the block with torch, BLAS and OpenMP on one thread, and :func:`map_tasks` on
    ``n_threads`` workers.

    Parameters
    ----------
    n_threads : int, optional
        Workers (default: ``torch.get_num_threads()`` on entry). Inside an open block (or a
        worker) the open block's workers serve and ``n_threads`` is ignored.
    """
    if _active["pool"] is not None or getattr(_worker, "busy", False):
        yield
        return
    n_threads = max(1, int(torch.get_num_threads() if n_threads is None else n_threads))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1), \
                ThreadPoolExecutor(n_threads, thread_name_prefix="bidsrecon-task",
                                   initializer=_start_worker) as pool:
            _active["pool"], _active["workers"] = pool, n_threads
            try:
                yield
            finally:
                _active["pool"], _active["workers"] = None, 1
    finally:
        torch.set_num_threads(previous)


def task_workers():
    """Workers of the open :func:`task_threads` block (1 without one, or in a worker)."""
    if _active["pool"] is None or getattr(_worker, "busy", False):
        return 1
    return _active["workers"]


def in_task_threads(function):
    """Decorator: ``function`` runs in a :func:`task_threads` block (of the caller's thread count
    unless one is open). Not for generator functions: their body runs after the call returns."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with task_threads():
            return function(*args, **kwargs)

    return wrapper


def map_tasks(function, items):
    """``[function(item) for item in items]``, on the workers of an open :func:`task_threads`
    block; in turn, in the calling thread, without one or from a worker.

    Each call must not depend on the others; results come back in the order of ``items``. On
    the first exception (a task's, or an interrupt of the waiting thread) the tasks not yet
    started are cancelled, and it is raised once the started ones have ended: none is left
    writing into the caller's arrays.
    """
    items = list(items)
    pool = _active["pool"]
    # Even one task goes to a worker: a thread made elsewhere (a reader thread) may not have its
    # OpenMP thread count set to one, and oneDNN reads that one.
    if pool is None or getattr(_worker, "busy", False):
        return [function(item) for item in items]
    futures = [pool.submit(function, item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def fixed_blocks(n, size):
    """Slices of ``range(n)`` of ``size`` (the last one shorter): blocks that depend on ``n``
    and ``size`` only, never on the thread count."""
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
