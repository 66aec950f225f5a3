"""Activities only the pre-v2 BotScheduler calls, kept so running bots finish their current run."""
