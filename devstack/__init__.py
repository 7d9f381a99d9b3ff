"""Development and test stack: real PostgreSQL, Redis, LiteLLM and a fake provider on loopback.

Not part of the product. Tests and `make run` start these on free 127.0.0.1 ports and stop them by PID.
"""
