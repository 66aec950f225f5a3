"""Benchmarks: the project's scheduler side by side with bare Temporal and Temporal Schedules.

`python -m bench [scenario] [--quick]` (or `xbot bench`) starts everything it needs on loopback,
runs bounded scenarios, prints a table, writes `bench/results/<scenario>.json` and regenerates
`docs/benchmarks.md`.
"""
