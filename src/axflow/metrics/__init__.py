"""Benchmark metrics: concept detection (`detection`) and steering factor selection (`steering`)."""
