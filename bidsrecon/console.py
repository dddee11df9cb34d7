"""What the console shows while a participant's workflow runs: one line per stage, with counts.

A Nipype status callback (:class:`StageConsole`) turns the steps' start and end into lines such
as ``12:03:07 sub-01 motion correction 37/196 runs, about 24 min left``: the steps of one stage
that run once per run (motion correction, samples) are counted, at most about ten lines a stage;
the others get a line when they end, and the long ones (decoding, reconstruction, evaluation)
one when they start too. Nipype's own step lines come at ``-v``.
Classes rather than closures: Nipype pickles map nodes together with their plugin settings.
"""
import re
import sys
import time

#: A node's name -> what the console calls its stage.
STAGES = {
    "realign_reference": "motion reference", "mean_reference": "mean volume", "brain_mask": "brain mask",
    "build_mask": "voxel mask", "realign": "motion correction", "run_samples": "samples",
    "decode": "decoding", "reconstruct": "reconstruction", "evaluate": "evaluation",
    "noise_ceiling": "noise ceiling", "tsnr": "tSNR map", "write_derivatives": "writing the outputs",
}


def say(text, stream=None):
    """One console line, with the time: ``12:03:07 text``."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=stream or sys.stderr, flush=True)

#: Stages long enough to announce when they start, not only when they end.
LONG_STAGES = ("decoding", "reconstruction", "evaluation")


class StageConsole:
    """A Nipype status callback printing one participant's stages to ``stream`` (stderr)."""

    def __init__(self, subject, n_runs, stream=None):
        self.subject, self.n_runs = subject, n_runs
        self.stream = stream
        self.started, self.done = {}, {}

    def __call__(self, node, status):
        # A map node's elements are named "_realign0", "_realign1", ...
        element = re.fullmatch(r"_(.+?)\d+", node.name)
        name = element.group(1) if element else node.name
        stage = STAGES.get(name)
        if stage is None or status not in ("start", "end"):
            return
        now = time.monotonic()
        self.started.setdefault(stage, now)
        if element:
            if status == "end":
                self._count(stage, now)
        elif status == "start" and stage in LONG_STAGES:
            self._print(f"{stage} ...")
        elif status == "end" and not self.done.get(stage):
            self._print(f"{stage} done ({_duration(now - self.started[stage])})")

    def _count(self, stage, now):
        done = self.done[stage] = self.done.get(stage, 0) + 1
        total = max(self.n_runs, done)
        if done != total and done % max(1, total // 10):
            return
        left = (now - self.started[stage]) / done * (total - done)
        self._print(f"{stage} {done}/{total} runs" + (f", about {_duration(left)} left" if done < total else ""))

    def _print(self, text):
        say(f"sub-{self.subject} {text}", self.stream)


class Callbacks:
    """Several Nipype status callbacks as one."""

    def __init__(self, *callbacks):
        self.callbacks = callbacks

    def __call__(self, node, status):
        for callback in self.callbacks:
            callback(node, status)


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
