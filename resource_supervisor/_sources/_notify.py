"""
Kernel memory notifications, waited on by the event loop.

Covers: :class:`MemoryNotifier`, which arms what the kernel and the permissions
allow and calls back on the event loop when one fires:

* cgroup v1: usage thresholds through ``cgroup.event_control`` and an eventfd per
  mark on ``memory.usage_in_bytes`` (armed at the warning and aggressive levels of the
  effective limit, re-armed when either changes; the kernel signals a crossing in
  either direction), and ``memory.pressure_level`` at ``medium`` (reclaim is
  struggling; also signalled at ``critical``);
* cgroup v2: ``memory.events`` of the cgroup and its ancestors through inotify (the
  kernel notifies the file when ``high``, ``max``, ``oom`` or ``oom_kill`` rise);
* PSI: a trigger written to the cgroup's ``memory.pressure`` (v2) or to
  ``/proc/pressure/memory`` (any host, also without a limit). Its descriptor signals
  ``EPOLLPRI``, which ``loop.add_reader`` (``EPOLLIN``) cannot wait for: an epoll
  descriptor of our own holds it with ``EPOLLPRI`` and is itself added with
  ``add_reader``, since an epoll descriptor reads as ready when any of its items is.

No thread waits: every descriptor is watched by the loop's selector. A mechanism
that is missing or refused is skipped, logged at debug, and polling carries on; the
snapshot shows what is armed (:meth:`MemoryNotifier.metrics`).

The v1 marks are on usage, which includes file cache, while the level is graded on
the working set: each mark sits above its level by the inactive file cache
(``total_inactive_file`` of ``memory.stat``, read at each update, never derived
from a usage read at another moment than the working set, which a fast ramp would
inflate), re-armed when that moves by more than 256 KiB. Cache that grows
between samples makes a mark fire early (an extra sample, which re-arms it above
the new usage); cache that shrinks makes it fire late, by what was reclaimed.

Does not cover: the rules for marks, trigger lines and rate limits (pure, in
:mod:`._arming`), sampling (:mod:`.._sampler`) or the loop that samples on a
notification (:mod:`.._supervisor`). Related: :mod:`._cgroup` locates the cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
from typing import TYPE_CHECKING, Final

from ._arming import (
    PsiTrigger,
    parse_memory_events,
    pressure_events,
    threshold_bytes,
    thresholds_to_rearm,
)
from ._cgroup import locate_cgroup, locate_v2_cgroup, parse_memory_stat
from ._inotify import Inotify
from ._proc import pread_all

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ("DEFAULT_PSI_TRIGGER", "MemoryNotifier", "NotifySource")

logger: Final = logging.getLogger("resource_supervisor.notify")

#: Tasks stalled on memory for 150 ms within one second: reclaim is costing real
#: time, well before the OOM killer. Unprivileged openers fall back to 300 ms in 2 s.
DEFAULT_PSI_TRIGGER: Final = PsiTrigger("some", 150_000, 1_000_000)

_PRESSURE_LEVEL: Final = b"medium"

NotifySource = str
"""The name of an armed mechanism, as counted in the snapshot."""


class MemoryNotifier:
    """
    Arm the kernel's memory notifications for one process's cgroup and call
    *on_notify* on the event loop whenever one fires.

    :meth:`start` arms what needs no limit (v1 ``memory.pressure_level``, v2
    ``memory.events``, PSI); :meth:`update`, called with each sample's limit, arms the
    v1 usage marks and re-arms them when the limit changes. :meth:`close` removes
    every reader and closes every descriptor. Used from one event loop; not
    thread-safe.
    """

    def __init__(
        self,
        on_notify: Callable[[NotifySource], None],
        *,
        levels_percent: Iterable[float],
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pid: int | None = None,
        psi_trigger: PsiTrigger = DEFAULT_PSI_TRIGGER,
        libc_name: str | None = None,
    ) -> None:
        """
        Prepare a notifier; nothing is opened until :meth:`start`.

        Args:
            on_notify: Called on the loop with the mechanism's name on each
                notification; it must not block.
            levels_percent: Percent of the effective limit at which the v1 usage
                marks are armed (the warning and aggressive thresholds).
            proc_root: Where procfs is mounted (PSI is ``<proc_root>/pressure/memory``).
            cgroup_root: Where the cgroup hierarchies are mounted.
            pid: The process whose cgroup is watched; ``None`` means this process.
            psi_trigger: The PSI trigger to arm.
            libc_name: The C library for inotify (``None``: this process's own).
        """
        self._on_notify = on_notify
        self._levels = tuple(levels_percent)
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._pid = pid
        self._psi_trigger = psi_trigger
        self._libc_name = libc_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: list[int] = []
        self._fds: list[int] = []
        # v1 usage marks: the eventfds armed now and the marks they stand for
        self._v1_dir: str | None = None
        self._v1_control_fd: int | None = None
        self._v1_usage_fd: int | None = None
        self._v1_stat_fd: int | None = None
        self._mark_fds: list[int] = []
        self._marks: tuple[int, ...] | None = None
        self._marks_refused = False
        self._pressure_level_armed = False
        self._events_files: list[str] = []
        self._events_counters: list[dict[str, int]] = []
        self._inotify_fd: int | None = None
        self._psi_epoll: select.epoll | None = None
        self._psi_fd: int | None = None
        self._psi_armed: PsiTrigger | None = None
        self._notifications = 0

    # -- lifecycle -------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`close` has not."""
        return self._loop is not None

    def start(self) -> None:
        """
        Arm what needs no limit and register the readers on the running loop;
        idempotent. Never raises for a missing or refused mechanism: it is logged at
        debug and left out (polling covers it).

        Raises:
            RuntimeError: If no asyncio event loop is running in this thread.
        """
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            self._arm_all()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove every reader and close every descriptor; idempotent."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            for fd in self._readers:
                loop.remove_reader(fd)
        self._readers = []
        self._close_marks()
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        epoll, self._psi_epoll = self._psi_epoll, None
        if epoll is not None:
            epoll.close()
        self._v1_dir = self._v1_control_fd = self._v1_usage_fd = self._v1_stat_fd = None
        self._inotify_fd = self._psi_fd = None
        self._psi_armed = None
        self._pressure_level_armed = False
        self._marks_refused = False
        self._events_files = []
        self._events_counters = []

    # -- state -----------------------------------------------------------------
    @property
    def notifications(self) -> int:
        """Notifications received since :meth:`start`, every mechanism together."""
        return self._notifications

    @property
    def psi_trigger(self) -> PsiTrigger | None:
        """The PSI trigger armed (after any unprivileged fallback), or ``None``."""
        return self._psi_armed

    @property
    def marks(self) -> tuple[int, ...]:
        """The v1 usage marks armed now, in bytes (empty when none)."""
        return self._marks if self._mark_fds and self._marks is not None else ()

    def armed(self) -> tuple[NotifySource, ...]:
        """
        The mechanisms armed now: ``cgroup_v1_threshold``, ``cgroup_v1_pressure_level``,
        ``cgroup_v2_events``, ``psi``.
        """
        names: list[str] = []
        if self._mark_fds:
            names.append("cgroup_v1_threshold")
        if self._pressure_level_armed:
            names.append("cgroup_v1_pressure_level")
        if self._events_files:
            names.append("cgroup_v2_events")
        if self._psi_armed is not None:
            names.append("psi")
        return tuple(names)

    def metrics(self) -> dict[str, int]:
        """
        The snapshot keys: ``memory_notifications_total`` and, per mechanism, how
        many are armed (usage marks, pressure-level listeners, watched
        ``memory.events`` files, PSI triggers).
        """
        return {
            "memory_notifications_total": self._notifications,
            "memory_notify_thresholds_armed": len(self._mark_fds),
            "memory_notify_pressure_level_armed": int(self._pressure_level_armed),
            "memory_notify_events_watched": len(self._events_files),
            "memory_notify_psi_triggers_armed": int(self._psi_armed is not None),
        }

    # -- arming ----------------------------------------------------------------
    def _arm_all(self) -> None:
        location = locate_cgroup(
            "memory", proc_root=self._proc_root, cgroup_root=self._cgroup_root, pid=self._pid
        )
        v2_dir = locate_v2_cgroup(
            proc_root=self._proc_root, cgroup_root=self._cgroup_root, pid=self._pid
        )
        if location is not None and location.version == "cgroup_v1":
            self._arm_v1(location.directory)
        elif location is not None:
            self._arm_v2_events(location.chain)
        else:
            logger.debug("no memory cgroup found: no cgroup notifications, polling only")
        psi_paths = []
        if v2_dir is not None:
            psi_paths.append(os.path.join(v2_dir, "memory.pressure"))
        psi_paths.append(os.path.join(self._proc_root, "pressure", "memory"))
        self._arm_psi(psi_paths)

    def _add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.add_reader(fd, callback)
        self._readers.append(fd)

    def _remove_reader(self, fd: int) -> None:
        if fd in self._readers:
            self._readers.remove(fd)
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(fd)

    def _notify(self, source: NotifySource) -> None:
        self._notifications += 1
        self._on_notify(source)

    def _arm_v1(self, directory: str) -> None:
        try:
            control = os.open(
                os.path.join(directory, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC
            )
        except OSError as exc:
            logger.debug("cgroup v1 event_control unavailable in %s: %s", directory, exc)
            return
        self._fds.append(control)
        self._v1_dir, self._v1_control_fd = directory, control
        try:
            self._v1_usage_fd = os.open(
                os.path.join(directory, "memory.usage_in_bytes"), os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError as exc:
            logger.debug("cgroup v1 memory.usage_in_bytes unavailable: %s", exc)
        else:
            self._fds.append(self._v1_usage_fd)
        try:
            self._v1_stat_fd = os.open(
                os.path.join(directory, "memory.stat"), os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError as exc:
            logger.debug("cgroup v1 memory.stat unavailable (marks at the bare levels): %s", exc)
        else:
            self._fds.append(self._v1_stat_fd)
        try:
            level_fd = os.open(
                os.path.join(directory, "memory.pressure_level"), os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError as exc:
            logger.debug("cgroup v1 memory.pressure_level unavailable: %s", exc)
            return
        self._fds.append(level_fd)
        event = self._register_event(level_fd, _PRESSURE_LEVEL, "cgroup_v1_pressure_level")
        if event is not None:
            self._fds.append(event)
            self._pressure_level_armed = True

    def _register_event(self, target_fd: int, argument: bytes, source: str) -> int | None:
        """An eventfd registered for *target_fd* through cgroup.event_control, or None."""
        assert self._v1_control_fd is not None
        event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            os.write(self._v1_control_fd, b"%d %d %s" % (event, target_fd, argument))
        except OSError as exc:
            os.close(event)
            logger.debug("cgroup v1 %s refused (%s): polling covers it", source, exc)
            return None

        def ready() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(event)  # clears the counter; level-triggered otherwise
                self._notify(source)

        self._add_reader(event, ready)
        return event

    def update(self, limit_source: str, limit_bytes: int) -> None:
        """
        Arm the v1 usage marks for this sample's limit, or re-arm them when the
        limit or the file cache moved them; disarm them when the limit no longer
        comes from the v1 cgroup. Reads ``memory.stat`` once (v1 limit only).

        Args:
            limit_source: The sample's ``memory_limit_source``.
            limit_bytes: The sample's ``memory_limit_bytes``.
        """
        if self._loop is None or self._v1_usage_fd is None or self._marks_refused:
            return
        if limit_source != "cgroup_v1":
            wanted: tuple[int, ...] = ()
        else:
            wanted = threshold_bytes(limit_bytes, self._levels, self._inactive_file_bytes())
        if not thresholds_to_rearm(self._marks, wanted):
            return
        self._close_marks()
        self._marks = wanted
        for mark in wanted:
            event = self._register_event(self._v1_usage_fd, b"%d" % mark, "cgroup_v1_threshold")
            if event is None:
                # refused once, refused always (e.g. a kernel without thresholds)
                self._close_marks()
                self._marks_refused = True
                return
            self._mark_fds.append(event)
        if wanted:
            logger.debug("cgroup v1 usage marks armed at %s bytes", wanted)

    def _inactive_file_bytes(self) -> int:
        if self._v1_stat_fd is None:
            return 0
        try:
            data = pread_all(self._v1_stat_fd, 8192)
            return parse_memory_stat(data, "total_inactive_file") or 0
        except (OSError, ValueError):
            return 0

    def _close_marks(self) -> None:
        fds, self._mark_fds = self._mark_fds, []
        self._marks = None
        for fd in fds:
            self._remove_reader(fd)
            # Closing the eventfd is what unregisters the kernel's threshold.
            os.close(fd)

    def _arm_v2_events(self, chain: tuple[str, ...]) -> None:
        try:
            inotify = Inotify(self._libc_name)
            fd = inotify.init()
        except (OSError, AttributeError) as exc:
            logger.debug("inotify unavailable (%s): memory.events is polled", exc)
            return
        self._fds.append(fd)
        self._inotify_fd = fd
        for directory in chain:
            path = os.path.join(directory, "memory.events")
            try:
                with open(path, "rb") as file:
                    counters = parse_memory_events(file.read())
                inotify.watch(fd, path)
            except OSError as exc:
                logger.debug("cannot watch %s: %s", path, exc)
                continue
            self._events_files.append(path)
            self._events_counters.append(counters)
        if self._events_files:
            self._add_reader(fd, self._events_ready)
        else:
            logger.debug("no memory.events to watch: polling only")

    def _events_ready(self) -> None:
        assert self._inotify_fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._inotify_fd, 4096):
                pass
        risen = False
        for index, path in enumerate(self._events_files):
            try:
                with open(path, "rb") as file:
                    counters = parse_memory_events(file.read())
            except OSError:
                continue  # the cgroup went away: its watch is dropped by the kernel
            if pressure_events(self._events_counters[index], counters):
                risen = True
            self._events_counters[index] = counters
        if risen:
            self._notify("cgroup_v2_events")

    def _arm_psi(self, paths: list[str]) -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                logger.debug("PSI file %s unavailable: %s", path, exc)
                continue
            for trigger in self._psi_trigger.candidates():
                try:
                    os.write(fd, trigger.line())
                except OSError as exc:
                    # EINVAL: a window an unprivileged opener may not use; try the next
                    if exc.errno != errno.EINVAL:
                        logger.debug("PSI trigger refused by %s: %s", path, exc)
                        break
                    continue
                epoll = select.epoll(1)
                try:
                    epoll.register(fd, select.EPOLLPRI)
                except OSError as exc:  # EPERM: a regular file, not a PSI file
                    epoll.close()
                    logger.debug("PSI file %s cannot be polled: %s", path, exc)
                    break
                self._psi_fd, self._psi_armed = fd, trigger
                self._fds.append(fd)
                self._psi_epoll = epoll
                self._add_reader(epoll.fileno(), self._psi_ready)
                logger.debug("PSI trigger %r armed on %s", trigger.line()[:-1], path)
                return
            else:
                logger.debug("PSI trigger refused by %s (invalid window)", path)
            os.close(fd)
        logger.debug("no PSI trigger armed: polling only")

    def _psi_ready(self) -> None:
        assert self._psi_epoll is not None
        # The loop's own readiness check already polled the trigger (and took its
        # event), so this may list nothing: the wake itself is the notification.
        events = self._psi_epoll.poll(0)
        if any(mask & (select.EPOLLERR | select.EPOLLHUP) for _, mask in events):
            # The file went away (its cgroup was removed): it would stay ready forever.
            logger.debug("PSI trigger file failed: disarmed, polling only")
            self._disarm_psi()
            return
        self._notify("psi")

    def _disarm_psi(self) -> None:
        epoll, self._psi_epoll = self._psi_epoll, None
        if epoll is not None:
            self._remove_reader(epoll.fileno())
            epoll.close()
        fd, self._psi_fd = self._psi_fd, None
        if fd is not None:
            self._fds.remove(fd)
            os.close(fd)
        self._psi_armed = None
