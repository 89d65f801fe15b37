"""Tests of resource_supervisor.integrations."""
