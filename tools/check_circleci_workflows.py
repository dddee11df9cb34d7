#!/usr/bin/env python3
"""Check the cross-references of a CircleCI config that its JSON schema cannot check.

``check-jsonschema --builtin-schema vendor.circle-ci`` checks the shape of the file; this checks
that its names agree:

- every job a workflow runs is defined under ``jobs:`` (or comes from a declared orb, or is an
  ``approval`` job, which needs no definition);
- every ``requires:`` entry names a job of the same workflow (its ``name:``, or a matrix's
  alias), no two jobs of a workflow share a name, and the requirements have no cycle;
- every executor a job uses is defined under ``executors:`` (or comes from a declared orb), and
  every job that runs steps has an executor.

Usage: ``python tools/check_circleci_workflows.py [CONFIG ...]`` (default
``.circleci/config.yml``). Exit status 0 when every file passes, 1 when a check fails (one
message per problem on standard error), 2 when a file cannot be read as a CircleCI config.
"""
import argparse
import itertools
import sys
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(".circleci/config.yml")
#: Ways a job can say where its steps run, besides a named ``executor:``.
INLINE_EXECUTORS = ("docker", "machine", "macos")


class ConfigError(Exception):
    """The file is not a CircleCI config that this checker can read."""


def _orb_name(reference):
    """The orb alias of ``orb/name``, else None."""
    return reference.split("/", 1)[0] if "/" in reference else None


def _is_templated(value):
    return isinstance(value, str) and "<<" in value


def _workflow_entries(workflow_name, workflow):
    """Yield ``(job reference, parameters)`` for each job entry of one workflow."""
    jobs = workflow.get("jobs")
    if not isinstance(jobs, list):
        raise ConfigError(f"workflow {workflow_name!r}: 'jobs' must be a list")
    for entry in jobs:
        if isinstance(entry, str):
            yield entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            (reference, parameters), = entry.items()
            if parameters is not None and not isinstance(parameters, dict):
                raise ConfigError(f"workflow {workflow_name!r}: job {reference!r}: its settings "
                                  "must be a mapping")
            yield reference, parameters or {}
        else:
            raise ConfigError(f"workflow {workflow_name!r}: a job entry must be a name or a "
                              f"one-key mapping, not {entry!r}")


def _matrix_names(reference, parameters):
    """The names CircleCI gives the jobs of a matrix entry (``exclude`` is not applied)."""
    matrix_parameters = parameters["matrix"].get("parameters") or {}
    keys = list(matrix_parameters)
    values = [value if isinstance(value, list) else [value] for value in matrix_parameters.values()]
    names = []
    for combination in itertools.product(*values):
        if "name" in parameters:
            name = str(parameters["name"])
            for key, value in zip(keys, combination):
                name = name.replace(f"<< matrix.{key} >>", str(value))
                name = name.replace(f"<<matrix.{key}>>", str(value))
        else:
            name = "-".join([reference, *(str(value) for value in combination)])
        names.append(name)
    return names


def _requirement_names(requires):
    """The job names of a ``requires:`` list (plain names, or ``{name: status}`` mappings)."""
    for requirement in requires:
        if isinstance(requirement, dict):
            yield from (str(name) for name in requirement)
        else:
            yield str(requirement)


def _find_cycle(graph):
    """A list of names forming a cycle in ``graph`` (name -> required names), else None."""
    visiting, done = [], set()

    def visit(name):
        if name in done:
            return None
        if name in visiting:
            return visiting[visiting.index(name):] + [name]
        visiting.append(name)
        for required in sorted(graph.get(name, ())):
            cycle = visit(required)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def check_workflows(config):
    """Check the workflows, jobs and executors of a parsed CircleCI config.

    Parameters
    ----------
    config : dict
        The config, as ``yaml.safe_load`` returns it.

    Returns
    -------
    list of str
        One message per problem; empty when the config passes.

    Raises
    ------
    ConfigError
        When the config is not a mapping or its sections have the wrong type.
    """
    if not isinstance(config, dict):
        raise ConfigError("the file is not a YAML mapping")
    sections = {}
    for section in ("jobs", "workflows", "executors", "orbs"):
        value = config.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"'{section}' must be a mapping")
        sections[section] = value
    jobs, workflows, executors, orbs = (sections[key] for key in ("jobs", "workflows", "executors", "orbs"))
    problems = _executor_problems(jobs, executors, orbs)
    for workflow_name, workflow in workflows.items():
        if workflow_name == "version" or not isinstance(workflow, dict):
            continue  # `version: 2` of 2.0 configs
        problems += _workflow_problems(workflow_name, workflow, jobs, orbs)
    return problems


def _known_orb(reference, orbs):
    orb = _orb_name(reference)
    return orb is not None and orb in orbs


def _executor_problems(jobs, executors, orbs):
    """Every job that runs steps has an executor, and every named executor is defined."""
    problems = []
    for job_name, job in jobs.items():
        if not isinstance(job, dict):
            problems.append(f"job {job_name!r}: its definition must be a mapping")
            continue
        executor = job.get("executor")
        if isinstance(executor, dict):
            executor = executor.get("name")
        if executor is None:
            # approval, no-op and other typed jobs run no steps; a build job needs somewhere to run.
            if job.get("type", "build") == "build" and not any(key in job for key in INLINE_EXECUTORS):
                problems.append(f"job {job_name!r} has no executor (executor:, docker:, machine: "
                                "or macos:)")
        elif not isinstance(executor, str):
            problems.append(f"job {job_name!r}: executor must be a name, not {executor!r}")
        elif not (executor in executors or _known_orb(executor, orbs) or _is_templated(executor)):
            if _orb_name(executor):
                problems.append(f"job {job_name!r} uses executor {executor!r}, but orb "
                                f"{_orb_name(executor)!r} is not declared under 'orbs:'")
            else:
                defined = ", ".join(sorted(executors)) or "none"
                problems.append(f"job {job_name!r} uses executor {executor!r}, which is not "
                                f"defined under 'executors:' (defined: {defined})")
    return problems


def _workflow_problems(workflow_name, workflow, jobs, orbs):
    """The jobs of one workflow exist, have distinct names, and require each other without a cycle."""
    problems = []
    entries = list(_workflow_entries(workflow_name, workflow))
    # Every name an entry is known by in this workflow -> the entry's own names.
    names, entry_names = {}, []
    for reference, parameters in entries:
        if parameters.get("type") == "approval" or _known_orb(reference, orbs):
            pass
        elif reference not in jobs:
            if _orb_name(reference):
                problems.append(f"workflow {workflow_name!r} runs job {reference!r}, but orb "
                                f"{_orb_name(reference)!r} is not declared under 'orbs:'")
            else:
                problems.append(f"workflow {workflow_name!r} runs job {reference!r}, which "
                                "is not defined under 'jobs:'")
        if isinstance(parameters.get("matrix"), dict):
            own = _matrix_names(reference, parameters)
            aliases = [str(parameters["matrix"].get("alias", reference))]
        else:
            own = [str(parameters.get("name", reference))]
            aliases = []
        entry_names.append(own)
        for name in own:
            if name in names and not _is_templated(name):
                problems.append(f"workflow {workflow_name!r} has two jobs named {name!r}: "
                                "give one a different 'name:'")
            names[name] = own
        for alias in aliases:
            names.setdefault(alias, [])
            names[alias] = names[alias] + own
    return problems + _requirement_problems(workflow_name, entries, entry_names, names)


def _requirement_problems(workflow_name, entries, entry_names, names):
    """Every ``requires:`` entry names a job of the workflow, and the requirements have no cycle."""
    problems, graph = [], {}
    for (reference, parameters), own in zip(entries, entry_names):
        requires = parameters.get("requires") or []
        if not isinstance(requires, list):
            problems.append(f"workflow {workflow_name!r}: job {own[0]!r}: 'requires' must be "
                            "a list")
            continue
        required = set()
        for requirement in _requirement_names(requires):
            if _is_templated(requirement):
                continue
            if requirement not in names:
                problems.append(f"workflow {workflow_name!r}: job {own[0]!r} requires "
                                f"{requirement!r}, which is not a job of this workflow "
                                f"(its jobs: {', '.join(sorted(names))})")
            else:
                required.update(names[requirement])
        for name in own:
            graph.setdefault(name, set()).update(required)
    cycle = _find_cycle(graph)
    if cycle:
        problems.append(f"workflow {workflow_name!r}: requirements form a cycle: "
                        f"{' -> '.join(cycle)}")
    return problems


def check_file(path):
    """Read and check one config file; returns its problems (see :func:`check_workflows`)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read it as YAML: {error}") from None
    return check_workflows(config)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, default=[DEFAULT_CONFIG],
                        help=f"CircleCI config files (default: {DEFAULT_CONFIG})")
    args = parser.parse_args(argv)
    status = 0
    for path in args.configs:
        try:
            problems = check_file(path)
        except ConfigError as error:
            print(f"{path}: {error}", file=sys.stderr)
            status = 2
            continue
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if problems:
            status = max(status, 1)
        else:
            print(f"{path}: workflows, jobs and executors agree")
    return status


if __name__ == "__main__":
    sys.exit(main())
