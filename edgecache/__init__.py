"""edgecache: a compute-local read-through cache in front of OpenStack Glance."""

__version__ = "0.1.0"
