"""Side-by-side benchmark of edgecache against nginx, Varnish and Glance (spec §9).

Not a test suite: nothing here is named test_*, so pytest never collects it.
"""
