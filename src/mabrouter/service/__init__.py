"""gRPC surface: the only package (with client.py) that touches the wire."""
