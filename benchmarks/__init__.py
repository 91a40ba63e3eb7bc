"""Benchmarks: scripts that print numbers (speed targets live here, never in the test suite)."""
