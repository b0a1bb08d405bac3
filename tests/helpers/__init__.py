"""The one place for helpers the tests share (plain code; fixtures live in the conftest.py
of the directory that shares them)."""
