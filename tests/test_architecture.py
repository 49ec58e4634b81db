"""The layering of docs/architecture.md: a module imports only modules of its own or a lower layer."""

from __future__ import annotations

import ast
import re
from typing import Dict, Set
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "itergen_ns"

FORMAT_MODULES = (  # the one reader/writer of snapshot shards (format.py re-exports the other three)
    "itergen_ns.snapshots.format",
    "itergen_ns.snapshots.format_schema",
    "itergen_ns.snapshots.format_writer",
    "itergen_ns.snapshots.format_reader",
)

LAYERS = [  # (layer, module prefixes), most specific prefix wins
    (0, ("itergen_ns.io", "itergen_ns.errors", "itergen_ns.compat")),
    (1, ("itergen_ns.data",)),
    (2, ("itergen_ns.render",)),
    (3, ("itergen_ns.models",)),
    (4, FORMAT_MODULES),
    (5, ("itergen_ns.diffusion",)),
    (6, ("itergen_ns.itergen",)),
    (7, ("itergen_ns.engine", "itergen_ns.method_configs", "itergen_ns.dataparser_configs")),
    (8, ("itergen_ns.snapshots", "itergen_ns.eval", "itergen_ns.cli", "itergen_ns.weights")),
]


def layer_of(module: str) -> int:
    best, length = None, -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    assert best is not None, f"{module}: in no layer of docs/architecture.md"
    return best


def package_imports() -> Dict[str, Set[str]]:
    """Every itergen_ns module and the itergen_ns modules it imports (module level or inside functions)."""
    out: Dict[str, Set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("itergen_ns"):
                if node.module == "itergen_ns":  # from itergen_ns import errors, io
                    found.update(f"itergen_ns.{a.name}" for a in node.names)
                else:
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("itergen_ns"))
        out[module] = found
    return out


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in package_imports().items()
        if module != "itergen_ns"
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_the_snapshot_format_imports_only_utilities() -> None:
    imports = package_imports()
    for module in FORMAT_MODULES:  # the format's modules import utilities and each other, nothing else
        assert imports[module] <= {"itergen_ns.io", "itergen_ns.errors", "itergen_ns.compat", *FORMAT_MODULES}, module


def test_the_datamanager_neither_renders_nor_samples() -> None:
    imports = package_imports()["itergen_ns.itergen.datamanager"]
    assert not {m for m in imports if m.startswith(("itergen_ns.render", "itergen_ns.diffusion"))}
    assert "itergen_ns.models.rendering" not in imports and "itergen_ns.itergen.generator" not in imports


MAX_MODULE_LINES = 320  # "each module <= ~300 lines with one job" (docs/architecture.md)
MAX_FUNCTION_LINES = 65  # statements after the docstring; a longer function wants named steps


def test_modules_and_functions_stay_readable() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(REPO_ROOT)
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                first = body[1] if has_doc and len(body) > 1 else body[0]
                length = (node.end_lineno or node.lineno) - first.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    assert too_long == []


def test_architecture_doc_names_every_module() -> None:
    """docs/architecture.md names each module in backticks (``name`` or ``name.py``; by file name, so two modules of
    one name share a mention): a new module without its sentence fails here."""
    doc = (REPO_ROOT / "docs" / "architecture.md").read_text()
    unnamed = [
        str(path.relative_to(REPO_ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" and not re.search(rf"`[^`\n]*\b{path.stem}(\.py)?`", doc)
    ]
    assert unnamed == []
