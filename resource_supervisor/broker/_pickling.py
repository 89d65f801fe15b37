"""
Pickling a call for a worker process, once, with an error that names the culprit.

Covers: :func:`pickle_call` (the ``(func, args)`` pair to bytes, the form the local
lane sends to its workers so the work is done once, not checked and then done
again), :func:`check_picklable` (the same check for backends that pickle on their
own, such as :mod:`._dask`), :func:`load_call` (the worker side) and
:func:`describe_callable` (a short name for error messages). Does not cover: how
results travel back (:mod:`._worker`) or where calls run (:mod:`._processes`).

Cost: one ``pickle.dumps`` of ``(func, args)`` with the standard library pickle
(about 2-5 us for a module-level function and a few small arguments). Only when it
fails is each part pickled on its own, to name what could not be pickled; that
slow path never runs for a good call.
"""

from __future__ import annotations

import functools
import pickle
from typing import TYPE_CHECKING

from .._exceptions import UnpicklableError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("check_picklable", "describe_callable", "load_call", "pickle_call")

# What pickling an arbitrary object may raise: PicklingError for lambdas and
# local objects, TypeError for locks and sockets, AttributeError for some local
# classes, RecursionError for very deep structures.
_PICKLE_ERRORS = (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError)


def describe_callable(func: object) -> str:
    """
    Return a short, readable name for *func*: ``module.qualname``, seen through partials.

    Args:
        func: Any callable (a function, a :func:`functools.partial`, a callable object).

    Returns:
        A name such as ``"tests._workers.square"`` or ``"partial(tests._workers.add)"``.
    """
    if isinstance(func, functools.partial):
        return f"partial({describe_callable(func.func)})"
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):
        return type(func).__qualname__
    module = getattr(func, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def pickle_call(func: Callable[..., object], args: tuple[object, ...]) -> bytes:
    """
    Pickle ``(func, args)`` into the bytes a worker runs with :func:`load_call`.

    Args:
        func: The callable, pickled by reference (it must be importable by name).
        args: Its positional arguments.

    Returns:
        The pickled pair (highest protocol).

    Raises:
        UnpicklableError: If the pair cannot be pickled. Its ``what`` names the
            function (``"the function tests.f.<locals>.<lambda>"``) or the first bad
            argument (``"argument 2 (type _thread.lock)"``, counted from 1); the
            pickling error is the ``__cause__``.
    """
    try:
        return pickle.dumps((func, args), protocol=pickle.HIGHEST_PROTOCOL)
    except _PICKLE_ERRORS as exc:
        raise _diagnose(func, args, exc) from exc


def check_picklable(func: Callable[..., object], args: tuple[object, ...]) -> None:
    """
    Fail fast if ``(func, args)`` cannot be sent to a worker process.

    For a backend that pickles calls itself; the local lane uses :func:`pickle_call`
    and sends the bytes it produced, so it pays for pickling once.

    Args:
        func: The callable.
        args: Its positional arguments.

    Raises:
        UnpicklableError: As :func:`pickle_call`.
    """
    pickle_call(func, args)


def load_call(payload: bytes) -> tuple[Callable[..., object], tuple[object, ...]]:
    """
    Unpickle what :func:`pickle_call` produced (runs in the worker).

    Args:
        payload: Bytes from :func:`pickle_call`.

    Returns:
        The ``(func, args)`` pair.
    """
    func, args = pickle.loads(payload)
    return func, args


def _diagnose(
    func: Callable[..., object], args: tuple[object, ...], exc: BaseException
) -> UnpicklableError:
    """Pickle each part alone to name what failed (slow path, failures only)."""
    name = describe_callable(func)
    try:
        pickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except _PICKLE_ERRORS as func_exc:
        return UnpicklableError(f"the function {name}", str(func_exc))
    for position, arg in enumerate(args, start=1):
        try:
            pickle.dumps(arg, protocol=pickle.HIGHEST_PROTOCOL)
        except _PICKLE_ERRORS as arg_exc:
            kind = f"{type(arg).__module__}.{type(arg).__qualname__}"
            return UnpicklableError(f"argument {position} (type {kind}) of {name}", str(arg_exc))
    return UnpicklableError(f"the arguments of {name}", str(exc))
