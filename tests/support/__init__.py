"""Support for the tests and the benchmarks: a real Prefect server, seeding, fault injection,
the demo. Not tests themselves."""
