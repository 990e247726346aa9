"""mabrouter: a gRPC sidecar that routes requests between model variants with Thompson sampling."""

__version__ = "0.1.0"
