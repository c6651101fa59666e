"""The retry policy of tests that apply against the real server: short waits, and enough
attempts to ride out a busy SQLite server's 503 ("database is locked"), which a CI machine
under load answers now and then to any write. A test that wants a failure to stay failed
injects one that outlasts these attempts, or a status runner does not retry."""

from runner.retry import RetryPolicy

BUSY_SERVER = RetryPolicy(max_attempts=6, initial_backoff=0.05, max_backoff=0.5, jitter=0.05)
