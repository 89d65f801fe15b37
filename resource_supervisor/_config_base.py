"""
The building blocks every settings model shares: the frozen base, the ``"auto"``-or-int
check of worker counts, and the error a cross-field check raises.

Covers: :class:`Frozen` (frozen, unknown keys refused, defaults validated, no infinite
or NaN numbers), :func:`auto_or_positive_int`, :class:`RelationError` (each problem
names its dotted key, value and reason, so :func:`._config_errors.translate` can blame
the right key). Does not cover: the models themselves (:mod:`._config_sections`,
:mod:`._config_dask`, :mod:`._config_model`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ._limits import MAX_WORKERS

__all__ = ("Frozen", "RelationError", "auto_or_positive_int")


def auto_or_positive_int(value: object) -> object:
    """Accept ``"auto"`` or an integer 1..MAX_WORKERS (also a digit string from env)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        # pydantic turns ValueError (not TypeError) into a validation error
        raise ValueError('must be "auto" or a positive integer')  # noqa: TRY004
    if value < 1:
        raise ValueError('must be "auto" or a positive integer (>= 1)')
    if value > MAX_WORKERS:
        raise ValueError(f'must be "auto" or a positive integer up to {MAX_WORKERS}')
    return value


class Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )


class RelationError(ValueError):
    """Failed cross-field checks, each knowing which key is at fault."""

    def __init__(self, problems: list[tuple[str, object, str]]) -> None:
        super().__init__("; ".join(reason for _, _, reason in problems))
        self.problems = problems
