"""Files over 400 lines and functions over 60 lines, for keeping modules and functions small.

    python tools/code_size.py [FOLDER ...]     (default: bidsrecon)

A function's length is given twice: with its docstring, and its code alone.
"""
import ast
import sys
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def function_sizes(path):
    """(lines, code lines, name) of every function in ``path``."""
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines_of_docstring = body[0].end_lineno - body[0].lineno + 1
            else:
                lines_of_docstring = 0
            yield lines, lines - lines_of_docstring, node.name


def main(folders):
    files = sorted(path for folder in folders for path in Path(folder).rglob("*.py"))
    print(f"files over {MAX_FILE_LINES} lines:")
    for path in files:
        count = len(path.read_text().splitlines())
        if count > MAX_FILE_LINES:
            print(f"  {count:5d}  {path}")
    print(f"functions over {MAX_FUNCTION_LINES} lines (lines, code lines without the docstring):")
    rows = [(lines, code, f"{path}:{name}") for path in files for lines, code, name in function_sizes(path)
            if lines > MAX_FUNCTION_LINES]
    for lines, code, where in sorted(rows, reverse=True):
        print(f"  {lines:5d} {code:5d}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["bidsrecon"]))
