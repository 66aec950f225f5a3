"""Composition roots: the worker and the `xbot` CLI, the only modules that import every layer."""
