"""A hash of the code behind a stage, so that Snakemake reruns a rule when its code changes.

Snakemake tracks a shell rule's command text, not the Python modules the command runs. Each rule
therefore carries ``params: code=stage_code_hash(<module>)``: a hash of the stage's module and of
every ``comedian`` module it imports, directly or not (imports inside functions included). Editing one
stage's code changes the hash of the rules that run it, and of nothing else.

The hash is over the modules' syntax trees without docstrings, so comments, formatting and
documentation do not rerun anything. Bookkeeping modules (:data:`BOOKKEEPING`: MLflow tracking, the
CLI dispatcher) are left out: they never change a stage's result.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "comedian"
#: Modules whose changes never rerun anything (they cannot change a stage's outputs).
BOOKKEEPING = frozenset({"comedian.tracking", "comedian.cli", "comedian.__main__", "comedian.codehash"})


def _module_file(name: str) -> str | None:
    """The source file of a ``comedian`` module, found without importing anything."""
    parts = name.split(".")[1:]
    base = Path(__file__).resolve().parent.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return str(path)
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


def _imported_modules(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """``comedian.*`` modules imported anywhere in a module (absolute and relative imports)."""
    found = set()
    base = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                module = f"{parent}.{module}" if module else parent
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


@cache
def _module_digest(name: str) -> tuple[str, frozenset[str]] | None:
    """(digest of the module's code, the comedian modules it imports), or None if not a module file."""
    path = _module_file(name)
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    imports = _imported_modules(tree, name, path.endswith("__init__.py"))
    digest = hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()
    return digest, frozenset(imports)


def stage_modules(module: str) -> list[str]:
    """The stage module and every ``comedian`` module it imports, transitively, minus bookkeeping."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in BOOKKEEPING:
            continue
        info = _module_digest(name)
        if info is None:
            continue
        seen.add(name)
        todo.extend(info[1])
    return sorted(seen)


def stage_code_hash(module: str) -> str:
    """A 16-hex-digit hash of the code behind a stage module (see the module docstring)."""
    if _module_digest(module) is None:
        raise ValueError(f"{module!r} is not an importable module of {PACKAGE}")
    combined = hashlib.sha256()
    for name in stage_modules(module):
        combined.update(f"{name}:{_module_digest(name)[0]}\n".encode())
    return combined.hexdigest()[:16]
