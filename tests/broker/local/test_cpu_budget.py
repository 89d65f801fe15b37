"""
The container's CPU budget: tokens held with kernel-released locks across real
processes, shared by demand, and the pure rule of how many a lane wants.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._peers import PeerDirectory
from resource_supervisor.broker._local._cpu_budget import CpuBudget, tokens_wanted

pytestmark = pytest.mark.timeout(30)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from resource_supervisor._peers import PeerDirectory
    from resource_supervisor.broker._local._cpu_budget import CpuBudget
    directory = PeerDirectory(Path(sys.argv[1]))
    directory.open()
    budget = CpuBudget(Path(sys.argv[1]), int(sys.argv[2]))
    print(budget.hold(int(sys.argv[3])), flush=True)
    for line in sys.stdin:
        print(budget.hold(int(line)), budget.surplus(), flush=True)
    """
)


class Holder:
    """A real process holding tokens of a budget, told by lines on stdin."""

    def __init__(self, directory: Path, tokens: int, wanted: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory), str(tokens), str(wanted)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.held = int(self._line())

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the holder died"
        return line

    def hold(self, wanted: int) -> tuple[int, int]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{wanted}\n")
        self.process.stdin.flush()
        held, surplus = self._line().split()
        return int(held), int(surplus)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def test_tokens_are_shared_by_demand_and_freed_by_a_kill(tmp_path: Path) -> None:
    """
    Two processes never hold more than the tokens together; one that finds none
    marks its want, which the holder sees as a surplus over its fair share (half of
    four) and answers by giving that back; at a fair share nobody gives more; a
    SIGKILLed holder's tokens are free at once.
    """
    directory = PeerDirectory(tmp_path)
    directory.open()
    budget = CpuBudget(tmp_path, 4)
    holder = Holder(tmp_path, 4, 4)
    try:
        assert holder.held == 4
        assert holder.hold(4) == (4, 0)  # nobody waits: no surplus
        assert budget.hold(3) == 0  # none free: this process now wants some
        assert holder.hold(4) == (4, 2)  # the holder sees the demand: 2 over its share
        assert holder.hold(2) == (2, 0)  # ... gives them back
        assert budget.hold(3) == 2  # takes them, still wants a third
        assert holder.hold(2) == (2, 0)  # at its fair share: nothing more to give
        assert budget.surplus() == 0  # neither has more than its share
        holder.kill()
        assert budget.hold(4) == 4  # the kernel released the dead holder's lock
    finally:
        holder.kill()
        budget.close()
        directory.close()
    assert budget.held == 0


def test_a_budget_needs_a_token() -> None:
    """Zero tokens is a programming error."""
    with pytest.raises(ValueError, match="at least one token"):
        CpuBudget(Path("/nonexistent"), 0)


@given(
    live=st.integers(0, 16),
    busy=st.integers(0, 16),
    starting=st.integers(0, 16),
    queued=st.integers(0, 100),
    max_workers=st.integers(1, 16),
)
def test_tokens_wanted_cover_the_workers_and_the_unserved_calls(
    live: int, busy: int, starting: int, queued: int, max_workers: int
) -> None:
    """Never fewer tokens than live workers; more only for calls no idle worker takes."""
    busy = min(busy, live)
    starting = min(starting, live - busy)
    idle = live - busy - starting
    wanted = tokens_wanted(
        live=live, busy=busy, starting=starting, queued=queued, max_workers=max_workers
    )
    assert wanted >= live
    if queued <= idle:
        assert wanted == live
    else:
        assert wanted == max(live, min(max_workers, live + queued - idle))
