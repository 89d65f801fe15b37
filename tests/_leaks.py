"""Leak probes shared by tests: child processes, threads and fds of this process."""

from __future__ import annotations

import os

import psutil

from tests._loop_guard import blocking_setup


@blocking_setup("reads a process command line through psutil")
def _is_resource_tracker(proc: psutil.Process) -> bool:
    # multiprocessing starts one resource tracker per interpreter, on first use of a
    # spawn or forkserver context, and keeps it for the interpreter's lifetime. It
    # belongs to multiprocessing, not to any pool, so leak checks leave it out.
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


@blocking_setup("lists child processes through psutil")
def live_children() -> list[psutil.Process]:
    """Running (non-zombie) descendants of this process, except the resource tracker."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or _is_resource_tracker(proc):
                continue
        except psutil.NoSuchProcess:
            continue
        found.append(proc)
    return found


@blocking_setup("lists child processes through psutil")
def child_pids() -> set[int]:
    """Pids of this process's descendants that can still be inspected (zombies and
    processes gone meanwhile are left out), except the resource tracker."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "multiprocessing.resource_tracker" in " ".join(proc.cmdline()):
                continue
        except psutil.Error:
            continue
        found.add(proc.pid)
    return found


@blocking_setup("lists /proc/self/fd")
def open_fds() -> set[int]:
    """File descriptors open in this process."""
    return {int(fd) for fd in os.listdir("/proc/self/fd")}
