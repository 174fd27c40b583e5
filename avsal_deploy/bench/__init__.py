"""Benchmark machinery: the machine's limit, FLOP counts, per-node profiles, reduced precision,
Triton's load tool, and the report ``avsal bench --out`` writes (the suites are in benchmarks/)."""
