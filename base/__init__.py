"""The bottom layer: errors and exit codes, paths and atomic writes, the offline wheels.

`methods/`, `tasks/` and `harness/` import from here; nothing here imports them (tests/test_layers.py).
"""
