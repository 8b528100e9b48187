"""Speed benchmarks: `python -m lopt.benchmarks.NAME` or `lopt bench NAME` (see each module)."""
