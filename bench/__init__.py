"""aioconveyor benchmarks: python -m bench [--quick]."""
