"""
The distributed process lane: calls and maps on a Dask cluster.

Where to look: admission, calls and maps (:mod:`._lane`), one call as one Dask
task (:mod:`._tasks`), polling the cluster (:mod:`._polling`), starting or
connecting to the cluster (:mod:`._cluster`, :mod:`._subprocess`,
:mod:`._security`), grading its pressure (:mod:`._pressure`), draining workers
(:mod:`._draining`) and the workers' stream intervals (:mod:`._streams`).

Imports nothing itself, so the ``dask`` extra stays optional.
"""
