"""Helpers shared by every test suite: waiting, factories, servers, databases, schedulers."""
