"""``python -m edgecache``."""

from edgecache.cli import main

main()
