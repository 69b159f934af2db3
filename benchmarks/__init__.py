"""Runnable benchmarks. Each compares against a baseline measured in the same run.

Run one with ``python -m benchmarks <name>`` (or ``kit bench <name>``); results land in
``benchmarks/results/<name>.json`` and ``benchmarks/results/<name>.md``.
"""
