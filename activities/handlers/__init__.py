"""Task handlers: one class per task type, registered in `activities.handlers.registry`."""
