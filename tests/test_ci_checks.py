"""Checks on the CI tooling: the CircleCI workflow checker, the Makefile's lint and chromium
targets, the CircleCI config's bids-apps steps and the cluster examples in ``examples/``.

Nothing here needs Docker, SLURM, Apptainer or the network: the commands those files would run
are replaced by fakes on PATH that record their arguments.
"""
import importlib.util
import inspect
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / ".circleci" / "config.yml"
CHECKER = REPO / "tools" / "check_circleci_workflows.py"
EXAMPLES = REPO / "examples"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_circleci_workflows", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = load_checker()


def run_checker(*paths):
    return subprocess.run([sys.executable, str(CHECKER), *map(str, paths)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def write_fake(bin_dir, name, text):
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def recorder(log):
    """A fake command that appends its name and arguments (one per line) to ``log``."""
    return f"""#!/bin/sh
{{ echo "CALL ${{0##*/}}"; for argument in "$@"; do echo "ARG $argument"; done; }} >> "{log}"
"""


def recorded_calls(log):
    """The calls a :func:`recorder` logged: a list of ``[name, argument, ...]``."""
    calls = []
    if log.exists():
        for line in log.read_text().splitlines():
            if line.startswith("CALL "):
                calls.append([line[5:]])
            elif line.startswith("ARG "):
                calls[-1].append(line[4:])
    return calls


# --- tools/check_circleci_workflows.py ---------------------------------------------------------

VALID = {
    "version": 2.1,
    "orbs": {"node": "circleci/node@5.0.0"},
    "executors": {"host": {"machine": {"image": "ubuntu-2404:current"}}},
    "jobs": {
        "build": {"executor": "host", "parameters": {"variant": {"type": "string"}},
                  "steps": ["checkout"]},
        "test": {"docker": [{"image": "python:3.11"}], "steps": ["checkout"]},
        "deploy": {"executor": {"name": "host"}, "steps": ["checkout"]},
        "lint": {"executor": "node/default", "steps": ["checkout"]},
    },
    "workflows": {
        "main": {"jobs": [
            "test",
            "lint",
            {"build": {"name": "build-cpu", "variant": "cpu"}},
            {"build": {"matrix": {"parameters": {"variant": ["a", "b"]}}}},
            {"hold": {"type": "approval", "requires": ["build-cpu"]}},
            {"node/test": {"requires": ["test"]}},
            {"deploy": {"requires": ["test", "build-cpu", "build", "build-b", "hold",
                                     {"lint": "success"}]}},
        ]},
        "nightly": {"jobs": ["test"]},
    },
}


def broken(edit):
    """A deep copy of VALID changed by ``edit(config)``."""
    config = yaml.safe_load(yaml.safe_dump(VALID))
    edit(config)
    return config


def test_the_repository_config_passes():
    result = run_checker(CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    # The default path is the repository's config.
    assert run_checker().returncode == 0


def test_a_valid_config_with_names_matrices_orbs_and_approvals_passes():
    assert checker.check_workflows(VALID) == []


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["workflows"]["main"]["jobs"].append("publish"),
     "runs job 'publish', which is not defined under 'jobs:'"),
    (lambda c: c["workflows"]["main"]["jobs"].append({"deploy": {"name": "d2", "requires": ["bulid-cpu"]}}),
     "job 'd2' requires 'bulid-cpu', which is not a job of this workflow"),
    # A job of another workflow does not count.
    (lambda c: c["workflows"]["nightly"]["jobs"].append({"deploy": {"requires": ["build-cpu"]}}),
     "workflow 'nightly': job 'deploy' requires 'build-cpu'"),
    # A job renamed with name: is known by that name only.
    (lambda c: c["workflows"]["nightly"]["jobs"].extend(
        [{"build": {"name": "build-x"}}, {"deploy": {"requires": ["build"]}}]),
     "job 'deploy' requires 'build', which is not a job of this workflow"),
    (lambda c: c["jobs"]["build"].update(executor="docker-host"),
     "job 'build' uses executor 'docker-host', which is not defined under 'executors:'"),
    (lambda c: c["jobs"]["deploy"].update(executor={"name": "hots"}),
     "job 'deploy' uses executor 'hots'"),
    (lambda c: c["jobs"]["lint"].update(executor="python/default"),
     "orb 'python' is not declared under 'orbs:'"),
    (lambda c: c["workflows"]["main"]["jobs"].append("python/test"),
     "runs job 'python/test', but orb 'python' is not declared"),
    (lambda c: c["jobs"].update(orphan={"steps": ["checkout"]}),
     "job 'orphan' has no executor"),
    (lambda c: c["workflows"]["main"]["jobs"].append({"build": {"name": "build-cpu"}}),
     "two jobs named 'build-cpu'"),
    (lambda c: c["workflows"]["nightly"]["jobs"].__setitem__(0, {"test": {"requires": ["test"]}}),
     "requirements form a cycle: test -> test"),
])
def test_broken_configs_fail_with_a_clear_message(edit, message, tmp_path):
    problems = checker.check_workflows(broken(edit))
    assert any(message in problem for problem in problems), problems
    # The same through the command line, on a file: exit status 1, the message on stderr.
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(broken(edit)))
    result = run_checker(path)
    assert result.returncode == 1
    assert message in result.stderr and str(path) in result.stderr


@pytest.mark.parametrize("text", ["- just\n- a list\n", "jobs: [a, b]\n", "jobs: {a: [\n",
                                  "workflows:\n  w:\n    jobs: {a: b}\n"])
def test_unreadable_configs_exit_2(text, tmp_path):
    path = tmp_path / "config.yml"
    path.write_text(text)
    result = run_checker(path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(path) in result.stderr


def test_a_broken_copy_of_the_repository_config_fails(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    workflow = next(iter(config["workflows"].values()))
    for entry in workflow["jobs"]:
        if isinstance(entry, dict) and "requires" in next(iter(entry.values())):
            next(iter(entry.values()))["requires"].append("no-such-job")
    del config["executors"][next(iter(config["executors"]))]
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    result = run_checker(path)
    assert result.returncode == 1
    assert "'no-such-job', which is not a job of this workflow" in result.stderr
    assert "which is not defined under 'executors:'" in result.stderr


# --- .circleci/config.yml: the bids-apps checks ------------------------------------------------

@pytest.fixture(scope="module")
def circleci():
    return yaml.safe_load(CONFIG.read_text())


def commands(job):
    for step in job["steps"]:
        if isinstance(step, dict) and "run" in step:
            run = step["run"]
            yield run if isinstance(run, str) else run["command"]


def test_ci_builds_both_variants_and_runs_both_levels_read_only(circleci):
    build = circleci["jobs"]["build"]
    assert build["parameters"]["variant"]["enum"] == ["cpu", "cuda"]
    text = "\n".join(commands(build))
    assert '--build-arg VARIANT="<< parameters.variant >>"' in text
    assert re.search(r'"\$\{IMAGE\}" --version', text)
    for level in ("participant", "group"):
        assert re.search(rf"/bids /out {level}\b", text), level
    docker_runs = re.findall(r"docker run [^\n]*", text)
    assert docker_runs and all("--read-only" in run for run in docker_runs), docker_runs
    assert "bids-validator-deno" in text
    variants = {entry["build"]["variant"] for entry in
                next(iter(circleci["workflows"].values()))["jobs"]
                if isinstance(entry, dict) and "build" in entry}
    assert variants == {"cpu", "cuda"}


def test_ci_deploys_both_variants_on_tags_only(circleci):
    workflow = next(iter(circleci["workflows"].values()))
    deploy = next(entry["deploy"] for entry in workflow["jobs"]
                  if isinstance(entry, dict) and "deploy" in entry)
    assert set(deploy["requires"]) >= {"test", "build-cpu", "build-cuda"}
    assert deploy["filters"]["branches"] == {"ignore": "/.*/"}
    assert "only" in deploy["filters"]["tags"]
    text = "\n".join(commands(circleci["jobs"]["deploy"]))
    assert "docker push" in text and "-cuda" in text


def test_ci_test_job_runs_make_test(circleci):
    assert "make test" in list(commands(circleci["jobs"]["test"]))


# --- Makefile ---------------------------------------------------------------------------------

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not installed")


@needs_make
def test_make_test_lints_before_pytest():
    result = subprocess.run([MAKE, "-n", "test"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    def position(fragment):
        matches = [index for index, line in enumerate(lines) if fragment in line]
        assert matches, f"`make test` does not run {fragment!r}:\n{result.stdout}"
        return matches[0]

    pytest_at = position("-m pytest")
    for check in ("hadolint Dockerfile",
                  "check-jsonschema --builtin-schema vendor.circle-ci .circleci/config.yml",
                  "tools/check_circleci_workflows.py .circleci/config.yml",
                  "command -v chromium"):
        assert position(check) < pytest_at, check


def run_make_chromium(tmp_path, fakes):
    """``make chromium`` with PATH holding only ``fakes`` (name -> script) and sh's tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in fakes.items():
        write_fake(bin_dir, name, text)
    return subprocess.run([MAKE, "--no-print-directory", "chromium"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)})


@needs_make
def test_chromium_target_does_nothing_when_chromium_is_there(tmp_path):
    log = tmp_path / "calls.log"
    result = run_make_chromium(tmp_path, {"chromium": "#!/bin/sh\n", "apt-get": recorder(log),
                                          "sudo": recorder(log), "id": "#!/bin/sh\necho 0\n"})
    assert result.returncode == 0, result.stderr
    assert recorded_calls(log) == []


@needs_make
def test_chromium_target_installs_it_with_apt_as_root(tmp_path):
    log = tmp_path / "calls.log"
    result = run_make_chromium(tmp_path, {"apt-get": recorder(log), "sudo": recorder(log),
                                          "env": recorder(log), "id": "#!/bin/sh\necho 0\n"})
    assert result.returncode == 0, result.stderr
    calls = recorded_calls(log)
    assert calls[0] == ["apt-get", "update"]
    assert calls[1] == ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                        "--no-install-recommends", "chromium"]
    assert not any(call[0] == "sudo" for call in calls)


@needs_make
def test_chromium_target_uses_sudo_when_not_root(tmp_path):
    log = tmp_path / "calls.log"
    result = run_make_chromium(tmp_path, {"apt-get": recorder(log), "sudo": recorder(log),
                                          "id": "#!/bin/sh\necho 1000\n"})
    assert result.returncode == 0, result.stderr
    calls = recorded_calls(log)
    assert calls[0] == ["sudo", "apt-get", "update"]
    assert calls[1][:2] == ["sudo", "env"] and calls[1][-1] == "chromium"


@needs_make
def test_chromium_target_fails_clearly_without_root_or_sudo(tmp_path):
    log = tmp_path / "calls.log"
    result = run_make_chromium(tmp_path, {"apt-get": recorder(log),
                                          "id": "#!/bin/sh\necho 1000\n"})
    assert result.returncode != 0
    assert "chromium is not installed" in result.stderr and "root" in result.stderr
    assert recorded_calls(log) == []


# --- examples/ --------------------------------------------------------------------------------

SHELL_EXAMPLES = sorted(EXAMPLES.glob("*.sh"))
PLUGIN_EXAMPLES = sorted([*EXAMPLES.glob("*.yml"), *EXAMPLES.glob("*.yaml"), *EXAMPLES.glob("*.json")])


def test_examples_exist():
    names = {path.name for path in EXAMPLES.iterdir()}
    assert {"slurm_apptainer_array.sh", "gpu.sh", "nipype_plugin_slurm.yml",
            "nipype_plugin_multiproc.yml"} <= names


@pytest.mark.parametrize("script", SHELL_EXAMPLES, ids=lambda path: path.name)
def test_shell_examples_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("settings_file", PLUGIN_EXAMPLES, ids=lambda path: path.name)
def test_plugin_examples_are_accepted(settings_file):
    from nipype.pipeline import plugins

    from bidsrecon.cli import PLUGINS, read_plugin_settings

    settings = yaml.safe_load(settings_file.read_text())
    assert settings["plugin"] in PLUGINS
    assert isinstance(settings["plugin_args"], dict)
    # As `--use-plugin FILE` reads it.
    name, arguments = read_plugin_settings(settings_file, 2, 8.0)
    assert name == settings["plugin"]
    assert dict(arguments).items() >= settings["plugin_args"].items()
    # Every argument is one that Nipype's plugin (or a base class) reads.
    plugin_class = getattr(plugins, f"{settings['plugin']}Plugin")
    source = "".join(inspect.getsource(cls) for cls in plugin_class.__mro__
                     if cls.__module__.startswith("nipype."))
    unknown = [key for key in settings["plugin_args"] if f'"{key}"' not in source
               and f"'{key}'" not in source]
    assert not unknown, f"Nipype's {plugin_class.__name__} ignores {unknown}"


def test_plugin_example_names_mirror_the_plugins():
    plugins = {yaml.safe_load(path.read_text())["plugin"] for path in PLUGIN_EXAMPLES}
    assert {"SLURM", "MultiProc"} <= plugins


@pytest.fixture
def dataset(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    # CRLF line ends and participant_id not in the first column must not matter.
    (bids / "participants.tsv").write_text(
        "age\tparticipant_id\tsex\r\n30\tsub-01\tF\r\n25\tsub-02\tM\r\n41\tsub-03\tF\r\n")
    return bids


def run_slurm_example(tmp_path, dataset, extra_env, *arguments):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    write_fake(bin_dir, "apptainer", recorder(log))
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path), "USER": "someone", "TMPDIR": str(tmp_path),
        "BIDS_DIR": str(dataset), "OUTPUT_DIR": str(tmp_path / "out"),
        "WORK_ROOT": str(tmp_path / "work"), "IMAGE": str(tmp_path / "bidsrecon.sif"),
        "SLURM_ARRAY_JOB_ID": "777", "SLURM_CPUS_PER_TASK": "4",
        **extra_env,
    }
    result = subprocess.run(["bash", str(EXAMPLES / "slurm_apptainer_array.sh"), *arguments],
                            capture_output=True, text=True, timeout=60, env=env)
    return result, recorded_calls(log)


def test_slurm_example_runs_one_participant_per_task(tmp_path, dataset):
    result, calls = run_slurm_example(
        tmp_path, dataset, {"SLURM_ARRAY_TASK_ID": "2", "SLURM_MEM_PER_NODE": "16000"},
        "--roi", "VC")
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call[:2] == ["apptainer", "run"]
    image_at = call.index(str(tmp_path / "bidsrecon.sif"))
    options, app = call[2:image_at], call[image_at + 1:]
    assert "--containall" in options and "--cleanenv" in options
    binds = [options[index + 1] for index, option in enumerate(options) if option == "--bind"]
    work_dir = tmp_path / "work" / "sub-02"
    assert binds == [f"{dataset}:/data:ro", f"{tmp_path / 'out'}:/out", f"{work_dir}:/work"]
    assert work_dir.is_dir()
    assert app[:5] == ["/data", "/out", "participant", "--participant-label", "02"]
    assert app[app.index("--nprocs") + 1] == "4"
    # 90% of 16,000 MB, in whole GB.
    assert app[app.index("--mem") + 1] == "14G"
    assert app[app.index("-w") + 1] == "/work"
    assert app[-2:] == ["--roi", "VC"]
    assert "--nv" not in options
    # The scratch folder that backed the container's /tmp is gone.
    scratch = options[options.index("--workdir") + 1]
    assert not Path(scratch).exists()


def test_slurm_example_reads_memory_per_cpu_and_gpu(tmp_path, dataset):
    result, calls = run_slurm_example(
        tmp_path, dataset, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_MEM_PER_CPU": "2048",
                            "USE_GPU": "1"})
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert "--nv" in call
    assert call[call.index("--participant-label") + 1] == "03"
    assert call[call.index("--mem") + 1] == f"{2048 * 4 * 9 // 10 // 1024}G"
    assert call[call.index("--device") + 1] == "cuda"


def test_slurm_example_stops_outside_the_participant_list(tmp_path, dataset):
    result, calls = run_slurm_example(tmp_path, dataset, {"SLURM_ARRAY_TASK_ID": "4"})
    assert result.returncode != 0
    assert "no participant for array task 4" in result.stderr
    assert calls == []


@pytest.fixture
def dataset_without_participants(tmp_path):
    """Subjects only as folders, as in the published ds001506 (no participants.tsv)."""
    bids = tmp_path / "ds001506"
    for label in ("03", "01", "10", "02"):
        (bids / f"sub-{label}").mkdir(parents=True)
    (bids / "sub-99.txt").write_text("not a subject folder")
    return bids


@pytest.mark.parametrize("task, label", [("1", "01"), ("2", "02"), ("3", "03"), ("4", "10")])
def test_slurm_example_without_participants_tsv_takes_the_folders(tmp_path, dataset_without_participants,
                                                                   task, label):
    result, calls = run_slurm_example(tmp_path, dataset_without_participants, {"SLURM_ARRAY_TASK_ID": task})
    assert result.returncode == 0, result.stderr
    (call,) = calls
    assert call[call.index("--participant-label") + 1] == label


@pytest.mark.parametrize("task", ["5", "0", "-1", "x"])
def test_slurm_example_without_participants_tsv_stops_outside_the_folders(tmp_path, dataset_without_participants,
                                                                          task):
    result, calls = run_slurm_example(tmp_path, dataset_without_participants, {"SLURM_ARRAY_TASK_ID": task})
    assert result.returncode == 66
    assert f"no participant for array task {task} in the sub-* folders of" in result.stderr
    assert calls == []


def test_readme_slurm_line_counts_the_subjects_without_participants_tsv(dataset_without_participants):
    # The README's sbatch line, run on a dataset laid out like ds001506: one task per subject folder.
    text = (REPO / "README.md").read_text()
    (count,) = re.findall(r"sbatch --array=1-\$\((.+?)\) \\\n", text)
    assert "participants.tsv" not in count
    command = count.replace("/data/ds001506", str(dataset_without_participants))
    result = subprocess.run(["bash", "-c", f"echo $({command})"], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "4", result.stderr
    script = (EXAMPLES / "slurm_apptainer_array.sh").read_text()
    assert f"sbatch --array=1-$({count})" in script


@pytest.mark.parametrize("engine, gpu_flag", [("docker", "--gpus"), ("apptainer", "--nv")])
def test_gpu_example_asks_for_the_gpu(engine, gpu_flag, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    write_fake(bin_dir, engine, recorder(log))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    result = subprocess.run(
        ["bash", str(EXAMPLES / "gpu.sh"), engine, str(tmp_path / "bids"), str(tmp_path / "out"),
         str(tmp_path / "work"), "--participant-label", "01"],
        capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    (call,) = recorded_calls(log)
    assert gpu_flag in call
    if engine == "docker":
        assert call[call.index("--gpus") + 1] == "all" and "--read-only" in call
        assert any(argument.endswith("-cuda") for argument in call)
    else:
        assert any(argument.endswith("-cuda.sif") for argument in call)
    assert call[-2:] == ["--participant-label", "01"]
    assert call[call.index("--device") + 1] == "cuda"
