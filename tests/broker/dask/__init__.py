"""Tests of resource_supervisor.broker._dask."""
