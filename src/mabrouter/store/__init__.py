"""Redis adapters: the only package that talks to Redis."""
