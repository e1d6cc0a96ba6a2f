"""The real daemon as a separate process, driven by blocking clients (lab/edgecache.py)."""
