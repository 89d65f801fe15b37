"""Module-level functions for the cold-start and version-gate tests (imports nothing heavy)."""

from __future__ import annotations

import sys


def loaded_modules() -> list[str]:
    """Return the names of every module loaded in this (worker) process."""
    return sorted(sys.modules)


def call_with(func: object, value: object) -> object:
    """Return ``func(value)``: a callable argument crossing to the worker."""
    assert callable(func)
    return func(value)
