"""Benchmarks: the synthetic catalogue, evaluate metric modules, retrieval runner, speed benchmarks."""
