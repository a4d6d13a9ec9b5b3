"""Benchmarks: sessions -> numbers, reports and gate verdicts (see the README for results)."""
