"""The BotScheduler before scheduler core v2, kept so running bots replay (see bot_scheduler.py)."""
