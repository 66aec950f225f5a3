"""Temporal activities: the scheduler's bookkeeping and the task handlers."""
