"""Repository-wide pytest configuration: our own test runs are reproducible, and generated files are not tests."""
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci")

collect_ignore = ["reports", "benchmarks", "build"]
