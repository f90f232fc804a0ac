"""axflow: a reproducible concept-detection and steering benchmark (AxBench re-implementation)."""
