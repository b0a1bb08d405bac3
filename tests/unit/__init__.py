"""Unit tests: the Python API, the command line and single components, each on its own."""
