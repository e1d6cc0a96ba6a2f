"""The HTTP surface (spec §4): the only package that speaks aiohttp.web."""
