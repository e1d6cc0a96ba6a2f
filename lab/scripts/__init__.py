"""Helper programs the launchers run by path inside the services' own venvs.

They import Swift, Keystone or werkzeug, which edgecache's environment does not
have: they are never imported from here, only run as ``VENV/bin/python FILE``.
"""
