"""Compatibility tests: against the Nydus reference tools, fixtures and the daemon API, and
nydus-snapshotter's scenarios for the manager."""
