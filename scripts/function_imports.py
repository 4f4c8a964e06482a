"""Count imports of the package made inside functions (a sign of import cycles being dodged).

    python scripts/function_imports.py [--list] [PACKAGE_DIR]

An import counts when it sits in a function body and names the package (``from .x``, ``from ..x``,
``import openood_ext...``). Third-party imports deferred for start-up time are counted apart.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def function_imports(root: Path):
    """Yield ``(path, line, internal: bool, text)`` for every import inside a function under ``root``."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom):
                    internal = node.level > 0 or (node.module or "").startswith(root.name)
                    yield path, node.lineno, internal, ast.unparse(node)
                elif isinstance(node, ast.Import):
                    internal = any(a.name.startswith(root.name) for a in node.names)
                    yield path, node.lineno, internal, ast.unparse(node)


def main(argv: list[str]) -> int:
    show = "--list" in argv
    args = [a for a in argv if a != "--list"]
    root = Path(args[0] if args else "openood_ext")
    seen = {}
    for path, line, internal, text in function_imports(root):
        # a function nested in another is walked twice; count each import once
        seen[(path, line, text)] = internal
    internal = [k for k, v in seen.items() if v]
    if show:
        for path, line, text in sorted(internal):
            print(f"{path}:{line}: {text}")
    print(f"function-level imports of the package: {len(internal)}; of other libraries: {len(seen) - len(internal)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
