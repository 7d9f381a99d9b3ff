"""Development and test stack: real PostgreSQL, Redis, LiteLLM and a fake provider on loopback.

Not part of the product. Tests start these on free 127.0.0.1 ports, `make run` on the ports its variables
name (devstack/ports.py); both stop them by PID, and the kernel stops them if the starter dies first.
"""
