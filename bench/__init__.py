"""threadline's concurrency benchmarks. Run ``python -m bench.actors`` from the repository root."""
