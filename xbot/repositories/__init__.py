"""SQL for bots, pulled posts, X users, replies and log rows: plain async functions over asyncpg."""
