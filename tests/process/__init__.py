"""The real daemon as a separate process, driven by blocking clients (tests/support/daemon.py)."""
