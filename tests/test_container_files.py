"""Checks on the container and CI files that need no Docker engine.

The image itself is built and run by CircleCI (`.circleci/config.yml`); here the Dockerfile is
linted and read, so a broken COPY, a root user or a lost pin is caught before that.
"""
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
# The lint tools come with requirements-dev.txt, in the same environment as this interpreter.
TOOLS_DIR = Path(sys.executable).parent


def dockerfile_instructions(text):
    """Split a Dockerfile into its instructions.

    Parameters
    ----------
    text : str
        The Dockerfile's content.

    Returns
    -------
    list of (str, str)
        ``(INSTRUCTION, arguments)`` in file order, continuation lines joined and comment lines
        dropped (Docker drops them inside continuations too).
    """
    instructions = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def env_settings(instructions):
    """Return the variables that the ENV instructions set, the last setting winning.

    Parameters
    ----------
    instructions : list of (str, str)
        As returned by :func:`dockerfile_instructions`.

    Returns
    -------
    dict of str to str
    """
    settings = {}
    for keyword, arguments in instructions:
        if keyword != "ENV":
            continue
        tokens = shlex.split(arguments)
        if "=" not in tokens[0]:
            # The legacy form `ENV KEY value with spaces` sets a single variable.
            settings[tokens[0]] = arguments.partition(" ")[2].strip()
            continue
        for token in tokens:
            key, _, value = token.partition("=")
            settings[key] = value
    return settings


def copy_sources_and_destination(arguments):
    """Return the sources and the destination of one COPY instruction.

    Parameters
    ----------
    arguments : str
        The instruction's arguments, in shell or JSON (exec) form.

    Returns
    -------
    sources : list of str
    destination : str
    """
    if arguments.startswith("["):
        tokens = json.loads(arguments)
    else:
        tokens = [token for token in shlex.split(arguments) if not token.startswith("--")]
    return tokens[:-1], tokens[-1]


def _ignore_pattern_regex(pattern):
    # Go's filepath.Match as Docker uses it: `*` and `?` stay within one path component,
    # `**/` spans any number of directories (none included), character classes pass through.
    parts = re.split(r"(\*\*/|\*\*|\*|\?|\[[^\]]*\])", pattern.strip("/"))
    translated = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    regex = "".join(
        translated.get(part, part if part.startswith("[") else re.escape(part)) for part in parts
    )
    return re.compile(regex)


def is_ignored(relative_path, ignore_lines):
    """Tell whether ``.dockerignore`` leaves a path out of the build context.

    Parameters
    ----------
    relative_path : str
        A path relative to the context root, with ``/`` separators.
    ignore_lines : list of str
        The lines of ``.dockerignore``.

    Returns
    -------
    bool
        True when the last pattern matching the path, or one of its parent directories, is
        not an exception (``!pattern``).
    """
    components = relative_path.split("/")
    candidates = ["/".join(components[: depth + 1]) for depth in range(len(components))]
    ignored = False
    for line in ignore_lines:
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = _ignore_pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def ignore_lines():
    return (REPO / ".dockerignore").read_text().splitlines()


def run_tool(name, *arguments):
    tool = TOOLS_DIR / name
    assert tool.is_file(), f"expected {name} next to {sys.executable}: install requirements-dev.txt"
    return subprocess.run(
        [str(tool), *arguments], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_hadolint_passes():
    result = run_tool("hadolint", "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_circleci_config_is_valid():
    config = REPO / ".circleci" / "config.yml"
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.circle-ci", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_the_console_script_in_exec_form(instructions):
    entrypoints = [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    # Exec form (a JSON list) so signals reach the app and arguments pass through unchanged.
    entrypoint = json.loads(entrypoints[-1])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert isinstance(entrypoint, list)
    assert entrypoint[0] in scripts, f"{entrypoint[0]!r} is not one of {sorted(scripts)}"


def test_installs_the_repository_requirements(instructions):
    destinations = [
        destination.rstrip("/") + "/requirements.txt" if destination.endswith("/") else destination
        for keyword, arguments in instructions
        if keyword == "COPY"
        for sources, destination in [copy_sources_and_destination(arguments)]
        if sources == ["requirements.txt"]
    ]
    assert destinations, "requirements.txt is not copied into the image"
    install_commands = [
        arguments for keyword, arguments in instructions
        if keyword == "RUN" and "pip install" in arguments
    ]
    assert any(
        re.search(rf"(-r|--requirement)[ =]{re.escape(destination)}(\s|$)", command)
        for command in install_commands
        for destination in destinations
    ), f"no RUN installs {destinations} with pip -r"


def test_requirements_are_pinned_including_torch():
    requirements = [
        line.split("#")[0].strip()
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    unpinned = [requirement for requirement in requirements if "==" not in requirement]
    assert not unpinned, f"unpinned requirements: {unpinned}"
    names = {requirement.split("==")[0].strip().lower() for requirement in requirements}
    assert {"torch", "torchvision"} <= names


def test_runs_as_a_non_root_user(instructions):
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "the Dockerfile never switches USER, so the app would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_sets_the_bids_app_environment(instructions):
    settings = env_settings(instructions)
    assert settings.get("NIPYPE_NO_ET") == "1"
    assert settings.get("PYTHONPATH") == ""
    # Under `docker run --read-only --tmpfs /tmp` only /tmp is writable.
    for cache in ("MPLCONFIGDIR", "NIPYPE_CONFIG_DIR"):
        assert settings.get(cache, "").startswith("/tmp"), f"{cache}={settings.get(cache)!r}"


def test_weights_are_baked_into_torch_home(instructions):
    torch_home_at = [
        index for index, (keyword, arguments) in enumerate(instructions)
        if keyword == "ENV" and "TORCH_HOME" in env_settings([(keyword, arguments)])
    ]
    download_at = [
        index for index, (keyword, arguments) in enumerate(instructions)
        if keyword == "RUN" and "vgg19(weights=" in arguments
    ]
    assert torch_home_at and download_at
    # Set before the download, so the weights land where the app will look for them.
    assert torch_home_at[0] < download_at[0]


def test_copied_paths_exist_and_are_in_the_build_context(instructions, ignore_lines):
    copied = [
        source
        for keyword, arguments in instructions
        if keyword == "COPY" and "--from" not in arguments
        for source in copy_sources_and_destination(arguments)[0]
    ]
    assert copied
    for source in copied:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        assert files, f"COPY {source}: nothing to copy"
        left_out = [str(f.relative_to(REPO)) for f in files
                    if is_ignored(f.relative_to(REPO).as_posix(), ignore_lines)]
        assert not left_out, f".dockerignore leaves out copied files: {left_out}"


@pytest.mark.parametrize("relative_path", [
    ".venv/bin/python",
    ".git/HEAD",
    "demo/sub-01/reconstruction.png",
    "bidsrecon/__pycache__/cli.cpython-311.pyc",
    ".pytest_cache/README.md",
])
def test_dockerignore_leaves_out_local_clutter(relative_path, ignore_lines):
    assert is_ignored(relative_path, ignore_lines)
