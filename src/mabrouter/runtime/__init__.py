"""Keeps the in-memory snapshot fresh and moves buffered writes to the store, off the request path; talks to
the store through its ports (store/ports.py), which app.py fills with the Redis adapters."""
