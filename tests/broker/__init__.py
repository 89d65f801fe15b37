"""Tests of resource_supervisor.broker."""
