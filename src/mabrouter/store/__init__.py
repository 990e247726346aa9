"""The store: its ports (ports.py, what the runtime and the CLI need, in domain terms), the Redis
adapters that implement them, and the one decoder of what is stored. The only package that talks to
Redis or knows its keys; its failures leave it as StoreUnavailableError."""
