"""resource-supervisor: keep an asyncio service inside its memory and CPU budget."""
