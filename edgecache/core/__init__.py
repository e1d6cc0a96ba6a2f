"""The cache itself: index, eviction policy, disk store, fills, and the request decision.

No HTTP here: nothing in this package imports aiohttp, the API, the daemon or an
upstream implementation (tests/unit/test_layers.py holds it to that).
"""
