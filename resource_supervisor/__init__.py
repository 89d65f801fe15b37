"""resource-supervisor."""
