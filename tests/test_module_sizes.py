"""
Module sizes: no module of the package is over :data:`LIMIT` lines, so each stays one
concept a newcomer can read through. The few modules being split now are listed in
:data:`ALLOWED` with the reason; an entry must go once its module is within the limit.
"""

from __future__ import annotations

from pathlib import Path

import resource_supervisor

LIMIT = 500
"""Most lines a module of the package may have."""

PACKAGE = Path(resource_supervisor.__file__).parent

ALLOWED: dict[str, str] = {}
"""Modules over :data:`LIMIT` now, path under the package -> why (shrinks as they land)."""


def oversized(root: Path, limit: int) -> dict[str, int]:
    """Every ``.py`` file under *root* with more than *limit* lines: relative path -> lines."""
    sizes = {
        path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(root.rglob("*.py"))
    }
    return {name: lines for name, lines in sizes.items() if lines > limit}


def _lines(path: Path) -> str:
    if not path.is_file():
        return "no such file"
    return f"{len(path.read_text(encoding='utf-8').splitlines())} lines"


def test_no_module_is_over_the_limit() -> None:
    """Every module not in ALLOWED has at most LIMIT lines; the failure names each file
    over it with its line count."""
    over = {name: lines for name, lines in oversized(PACKAGE, LIMIT).items() if name not in ALLOWED}
    listed = ", ".join(f"resource_supervisor/{name} ({n} lines)" for name, n in over.items())
    assert not over, f"modules over {LIMIT} lines (split them by concept): {listed}"


def test_every_allowed_module_is_still_over_the_limit() -> None:
    """An ALLOWED entry names a module that exists and is still over LIMIT lines: once it
    is split (or moved), the entry must be removed, so the list only shrinks."""
    over = oversized(PACKAGE, LIMIT)
    stale = {name: reason for name, reason in ALLOWED.items() if name not in over}
    listed = ", ".join(f"resource_supervisor/{name} ({_lines(PACKAGE / name)})" for name in stale)
    assert not stale, f"remove from ALLOWED, now within {LIMIT} lines or gone: {listed}"


def test_the_walk_counts_lines_and_finds_nested_modules(tmp_path: Path) -> None:
    """The check counts lines, not bytes, reaches modules in nested packages, flags a
    module one line over the limit and passes one exactly at it."""
    nested = tmp_path / "pkg" / "_sub"
    nested.mkdir(parents=True)
    (nested / "_big.py").write_text("x = 1\n" * 11, encoding="utf-8")
    (tmp_path / "pkg" / "_exact.py").write_text("y = 2\n" * 10, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("z\n" * 50, encoding="utf-8")
    assert oversized(tmp_path, 10) == {"pkg/_sub/_big.py": 11}
