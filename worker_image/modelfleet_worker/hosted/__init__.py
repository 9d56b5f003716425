"""Adapter mode: the worker serves a hosted provider's image model as a ModelFleet pool.

`backend` holds the extension point (ProviderBackend) and its typed results and
failures; `translate` the pure request translation; `registry` maps backend names
to factories; `server` is the HTTP shell.
"""
