"""Where image bytes and Glance's verdicts come from: the only package that talks to the network.

``glance`` is the Glance v2 client, ``stores`` the direct store reads, ``body``
the HTTP body every source hands to a fill, ``service_auth`` edgecache's own
credentials. The cache sees only :class:`edgecache.model.ImageSource`.
"""
