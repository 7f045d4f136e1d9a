"""Helpers shared by the integration tests, the conformance runner and bench/."""
