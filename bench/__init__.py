"""Side-by-side benchmark of edgecache against nginx, Varnish and Glance.

Not a test suite: nothing here is named test_*, so pytest never collects it.

See docs/behaviour.md#quality-bars.
"""
