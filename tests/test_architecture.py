"""The packages' imports flow one way (tools/import_graph.py): no cycle between subpackages."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_no_cycle_between_subpackages():
    edges = import_graph.import_edges(ROOT / "bidsrecon")
    assert ("bidsrecon.decoding", "bidsrecon.recon") not in edges  # the spread statistics live in features
    assert import_graph.cycles(edges) == []


def test_a_cycle_is_found(tmp_path):
    package = tmp_path / "pkg"
    for name, text in (("a/__init__.py", "from pkg.b import x\n"), ("b/__init__.py", "def f():\n    import pkg.a\n"),
                       ("c.py", "import pkg.a\n")):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    (package / "__init__.py").write_text("")
    edges = import_graph.import_edges(package)
    assert set(edges) == {("pkg.a", "pkg.b"), ("pkg.b", "pkg.a"), ("pkg.c", "pkg.a")}
    assert import_graph.cycles(edges) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert import_graph.main([str(package)]) == 1
