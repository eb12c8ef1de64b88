"""Clients of the cvh suite: the Python client and the ``cvh`` command line."""
