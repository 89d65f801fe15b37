"""
The local process lane: single-worker process pools on this machine, one per slot.

Where to look: the lane, its queue and dispatch (:mod:`._lane`), with one part
per concept: submission (:mod:`._submission`), outcomes (:mod:`._delivery`),
slots started, retired and reaped (:mod:`._slot_life`), sizing applied
(:mod:`._resizing`), cancellation and kills (:mod:`._kills`); a slot and its
channel (:mod:`._slot`), the wire format (:mod:`._protocol`, :mod:`._worker` for
the worker's side; big outcome frames read in a thread, :mod:`._big_frames`, into
objects filled in place, :mod:`._fresh_objects`; long sequences pickled in pieces,
:mod:`._pieces`), starting and stopping slots (:mod:`._launcher`,
:mod:`._forkserver`, :mod:`._stopping`), the pure rules (:mod:`._sizing`,
:mod:`._dispatch`, :mod:`._recycling`, :mod:`._headroom`), and the guards that
keep nothing alive past the service (:mod:`._lifeline`, :mod:`._spill`,
:mod:`._fork_guard`).

Imports nothing itself: a worker that imports :mod:`._worker` loads only what the
worker needs.
"""
