"""Keeps the in-memory snapshot fresh and moves buffered writes to Redis, off the request path."""
