"""GitHub webhook parsing: pure functions, no I/O."""
