"""The mesh engine: pure protocol logic, no I/O (time and randomness are arguments)."""
