"""
The local process lane: single-worker process pools on this machine, one per slot.

Where to look: the lane and its queue (:mod:`._lane`), a slot and its channel
(:mod:`._slot`), the wire format (:mod:`._worker` for the worker's half,
:mod:`._slot` for the lane's), starting and stopping slots (:mod:`._launcher`,
:mod:`._forkserver`, :mod:`._stopping`, :mod:`._kills`), the pure rules
(:mod:`._sizing`, :mod:`._dispatch`, :mod:`._recycling`, :mod:`._headroom`), and
the guards that keep nothing alive past the service (:mod:`._lifeline`,
:mod:`._spill`, :mod:`._fork_guard`).

Imports nothing itself: a worker that imports :mod:`._worker` loads only what the
worker needs.
"""
