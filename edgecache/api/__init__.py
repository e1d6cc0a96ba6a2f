"""The HTTP surface (docs/behaviour.md#http-surface): the only package that speaks aiohttp.web."""
