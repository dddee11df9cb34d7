"""Stopping on Ctrl-C (SIGINT) and SIGTERM: every worker stopped, one line, exit 130 or 143.

Left to themselves, the signals go wrong inside Nipype: a KeyboardInterrupt in a step is caught
and reported as that step's crash (exit 1, a crash file, two tracebacks), one arriving in the
main process between steps can be swallowed by a bare ``except`` so that the run ends 0, and a
SIGTERM ends the main process while MultiProc's workers carry on for minutes, each holding its
memory. So the main process handles both signals itself: it terminates its whole process tree
(workers first asked, then killed after a grace period), says in one line that the same command
resumes, and exits at once with 128 + the signal number, as a shell reports a signalled command.

Nothing is lost by exiting without unwinding: every output is written through a temporary file
and a rename (a reader sees the old file or the new one), the participant's outputs are moved
into place only when its run has ended, and Nipype reruns a step that has no result file.
"""
import contextlib
import os
import signal
import sys
import threading

# Seconds the workers get to end after SIGTERM before they are killed.
GRACE_SECONDS = 5.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_process_tree(grace_seconds=GRACE_SECONDS):
    """Terminate every descendant of this process; kill those still alive after ``grace_seconds``."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_seconds)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace_seconds)


@contextlib.contextmanager
def stop_cleanly_on_signals():
    """Within the block, SIGINT and SIGTERM stop the process tree and exit with 128 + the signal.

    Handlers can only be set from the main thread; elsewhere (a test's thread) the block runs
    with the signals as they were.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def stop(signum, frame):
        if os.getpid() != main_pid:
            # A worker forked from this process inherited the handler: it ends as the signal says.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        for number in _SIGNALS:  # a second Ctrl-C while the workers end does not interrupt this
            signal.signal(number, signal.SIG_IGN)
        # A progress bar may hold the line (it ends in a carriage return, not a newline).
        sys.stderr.write(f"\nbidsrecon: stopped by {signal.Signals(signum).name}; stopping the workers. Finished "
                         "outputs and steps are kept: the same command resumes from them.\n")
        sys.stderr.flush()
        # What the pool's threads report about the workers ended below is noise after that line.
        silent = os.open(os.devnull, os.O_WRONLY)
        for descriptor in (1, 2):
            os.dup2(silent, descriptor)
        stop_process_tree()
        os._exit(128 + signum)

    previous = {number: signal.signal(number, stop) for number in _SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
