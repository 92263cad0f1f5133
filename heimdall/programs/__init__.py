"""Console scripts: one thin main() per program of the suite."""
