#!/usr/bin/env python3
"""Which bidsrecon package imports which: the edges between subpackages, and any cycle among them.

Reads the source with ``ast`` (nothing is imported), counting imports inside functions too.
A module directly in ``bidsrecon/`` counts as its own node (``bidsrecon.cli``); a module of a
subpackage as the subpackage (``bidsrecon.decoding``). Usage::

    python tools/import_graph.py [PACKAGE_DIR]   # default: bidsrecon

Prints one ``importer -> imported (modules)`` line per edge, then the cycles; exit status 1 when
there is a cycle between subpackages.
"""
import ast
import sys
from collections import defaultdict
from pathlib import Path


def node_of(module, package):
    parts = module.split(".")
    if parts[0] != package or len(parts) == 1:
        return None
    return ".".join(parts[:2])


def import_edges(root):
    """``{(importer, imported): {importing module, ...}}`` between nodes of the package at ``root``."""
    package = root.name
    edges = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        module = ".".join((package, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        importer = node_of(module, package)
        for statement in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            elif isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
                names = [statement.module]
            else:
                continue
            for name in names:
                imported = node_of(name, package)
                if importer and imported and imported != importer:
                    edges[importer, imported].add(module)
    return edges


def cycles(edges):
    """Every simple cycle of the graph, each once (from its smallest node)."""
    graph = defaultdict(set)
    for importer, imported in edges:
        graph[importer].add(imported)
    found = []

    def walk(start, node, path):
        for following in sorted(graph[node]):
            if following == start:
                found.append(path + [start])
            elif following > start and following not in path:
                walk(start, following, path + [following])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def main(argv=None):
    root = Path((argv or sys.argv[1:] or ["bidsrecon"])[0])
    edges = import_edges(root)
    for (importer, imported), modules in sorted(edges.items()):
        print(f"{importer} -> {imported} ({', '.join(sorted(modules))})")
    found = cycles(edges)
    for cycle in found:
        print("cycle: " + " -> ".join(cycle))
    print(f"{len(edges)} edges, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
