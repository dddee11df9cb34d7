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


def _load_tool(name):
    tool_spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(tool_spec)
    tool_spec.loader.exec_module(module)
    return module


def test_compare_outputs(tmp_path):
    compare_outputs = _load_tool("compare_outputs")
    for side in ("old", "new"):
        out = tmp_path / side / "bidsrecon"
        (out / "sub-01" / "log").mkdir(parents=True)
        (out / "dataset_description.json").write_text(f'{{"URL": "file://{tmp_path / side}/bids"}}')
        (out / "sub-01" / "x.png").write_bytes(b"\x89PNG same")
        (out / "sub-01" / "log" / "sub-01_desc-provenance_log.json").write_text(f'{{"Started": "{side}"}}')
        (out / "sub-01.html").write_text(f"<p>{side}</p>")
    old, new = tmp_path / "old" / "bidsrecon", tmp_path / "new" / "bidsrecon"
    assert compare_outputs.main([str(old), str(new)]) == 0
    (new / "sub-01" / "x.png").write_bytes(b"\x89PNG other")
    (new / "sub-01" / "y.tsv").write_text("a\n")
    same, differing, only_old, only_new, excepted = compare_outputs.compare(old, new)
    assert (differing, only_old, only_new) == (["sub-01/x.png"], [], ["sub-01/y.tsv"])
    assert excepted == ["sub-01.html", "sub-01/log/sub-01_desc-provenance_log.json"]
    assert compare_outputs.main([str(old), str(new)]) == 1
