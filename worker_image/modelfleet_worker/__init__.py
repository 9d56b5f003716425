"""ModelFleet worker: a diffusers model server with adaptive micro-batching."""

__version__ = "0.1.0"
