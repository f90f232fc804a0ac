"""Concept lists, instruction pools, AxBench importers and dataset synthesis."""
