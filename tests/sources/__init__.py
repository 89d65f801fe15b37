"""Tests of resource_supervisor._sources."""
