"""Local stand-ins for hosted image APIs (test and demo code, never shipped): real aiohttp
servers on loopback that implement each provider's published wire format strictly and
answer faults on demand. `common` holds what they share (PNG drawing, the fault script,
the control routes, running in-process or as a process)."""
