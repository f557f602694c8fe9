"""Benchmarks of the framework's own cost, run with ``manage.py bench [NAME] [--quick]``.

Every module here is one benchmark, found by convention: it defines
``run(*, quick: bool = False, stdout: TextIO | None = None) -> dict``, which measures,
prints a summary to ``stdout`` and returns (and, for a full run, records under
``benchmarks/results/``) the figures. ``quick=True`` is a short smoke run whose figures
are too rough to keep. Figures are measured and reported, never asserted in tests.
"""
