"""How many threads a node's numeric libraries may use."""
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def limited_threads(n_threads):
    """Cap torch and the BLAS/OpenMP pools at ``n_threads`` inside the block.

    Unbounded pools oversubscribe the CPUs when Nipype runs nodes in parallel, and BLAS calls
    from numpy then run many times slower than on one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(limits=n_threads):
            yield
    finally:
        torch.set_num_threads(previous)
