"""How many threads a node's numeric libraries may use."""
from contextlib import contextmanager

from bidsrecon.parallel import task_threads


@contextmanager
def limited_threads(n_threads):
    """Give the block ``n_threads`` threads, used so that its results do not depend on them.

    torch, BLAS and OpenMP run on one thread each inside the block, and the work that
    :mod:`bidsrecon.parallel` splits into tasks fixed by the data (images, items, folds,
    blocks of units) runs on ``n_threads`` workers: the same command gives the same bits
    with any ``--nprocs``/``--omp-nthreads``. Unbounded pools would also oversubscribe the CPUs
    when Nipype runs nodes in parallel (BLAS calls from numpy then run many times slower than
    on one thread).
    """
    with task_threads(n_threads):
        yield
