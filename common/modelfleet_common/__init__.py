"""What the router and the worker both speak, and nothing else: the worker never
imports the operator package, so shared wire formats live here."""
