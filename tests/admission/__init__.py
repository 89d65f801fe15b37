"""Tests of resource_supervisor._admission."""
