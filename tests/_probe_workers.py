"""Module-level functions for the cold-start and version-gate tests (imports nothing heavy)."""

from __future__ import annotations

import sys


def loaded_modules() -> list[str]:
    """Return the names of every module loaded in this (worker) process."""
    return sorted(sys.modules)
