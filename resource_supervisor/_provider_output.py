"""
What a metrics provider may put in a snapshot: names, bounds and a key budget.

Covers: the provider names that are refused because built-in metrics live under
them (:data:`RESERVED_PROVIDER_NAMES`, so ``cleanup`` + ``runs_total`` can never
overwrite ``cleanup_runs_total``), and :func:`validate_output`, which keeps the
usable metrics of one provider result and counts the others: a key that is not
letters, digits and ``_``, a value that is not a finite number that fits a float
(``10**400`` would break every exporter), and every key beyond
:data:`MAX_PROVIDER_METRICS` (a provider returning a million keys would stall the
loop on every sample). Pure; no I/O. Does not cover: calling providers, timeouts
and failure counting (:mod:`._sampler`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from typing import Final

from ._metric_keys import CORE_NAMESPACES

__all__ = (
    "MAX_PROVIDER_METRICS",
    "RESERVED_PROVIDER_NAMES",
    "NotAMappingError",
    "check_provider_name",
    "validate_output",
)

MAX_PROVIDER_METRICS: Final = 256
"""Metrics kept per provider and sample; the rest are dropped and counted. Checking a
key costs about a microsecond of loop time, so 256 bound a provider to a fraction of
a millisecond per sample."""

#: The first word of every built-in namespace (:data:`._metric_keys.CORE_NAMESPACES`),
#: and ``session``: a provider named after one could shadow a built-in metric, so
#: these names are refused. A test checks that every key of a real snapshot lies in a
#: registered namespace (add the namespace there when adding one).
RESERVED_PROVIDER_NAMES: Final = frozenset(
    {namespace.split("_", 1)[0] for namespace in CORE_NAMESPACES} | {"session"}
)

_PROVIDER_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_GPU_DEVICE: Final = re.compile(r"gpu\d+")
_METRIC_KEY: Final = re.compile(r"[A-Za-z0-9_]+")


class NotAMappingError(TypeError):
    """Raised by :func:`validate_output` when a provider returned no mapping at all."""


def check_provider_name(name: object) -> None:
    """
    Refuse a provider name that is malformed or a built-in namespace.

    Raises:
        ValueError: If *name* is not ``[a-z][a-z0-9_]*``, or its first word is a
            built-in namespace (``cleanup``, ``memory``, ``gpu0``, ...).
    """
    if not isinstance(name, str) or not _PROVIDER_NAME.fullmatch(name):
        raise ValueError(f"provider name {name!r} must match [a-z][a-z0-9_]*")
    first = name.split("_", 1)[0]
    if first in RESERVED_PROVIDER_NAMES or _GPU_DEVICE.fullmatch(first):
        raise ValueError(
            f"provider name {name!r} is refused: built-in metrics live under {first}_*, "
            "so its metrics could shadow them; choose another name"
        )


def validate_output(name: str, raw: object) -> tuple[dict[str, float | int], int]:
    """
    Keep the usable metrics of provider *name*'s result, prefixed ``<name>_``.

    Returns:
        The kept metrics, and how many were dropped.

    Raises:
        NotAMappingError: If *raw* is not a mapping (the whole result is unusable).
    """
    if not isinstance(raw, Mapping):
        raise NotAMappingError(f"returned {type(raw).__name__}, not a mapping")
    metrics: dict[str, float | int] = {}
    dropped = max(0, len(raw) - MAX_PROVIDER_METRICS)
    # Only the first MAX_PROVIDER_METRICS items are looked at: len() is O(1), a
    # walk over a million keys is not.
    for key, value in itertools.islice(raw.items(), MAX_PROVIDER_METRICS):
        if not isinstance(key, str) or not _METRIC_KEY.fullmatch(key) or not _usable(value):
            dropped += 1
            continue
        metrics[f"{name}_{key}"] = value
    return metrics, dropped


def _usable(value: object) -> bool:
    """A finite int or float that converts to a float (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        return False
