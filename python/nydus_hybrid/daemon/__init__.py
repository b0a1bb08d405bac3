"""The nydusd-compatible daemon: ``python -m nydus_hybrid.daemon``.

Modules: ``args`` (nydusd's command line), ``state`` (INIT/READY/RUNNING/STOPPED),
``service`` (the FUSE mount and its RAFS instances), ``api`` (the HTTP API on the unix
socket, contract in ``openapi.yaml``), ``main`` (start-up, crash detection, signals). All
file data stays in the Rust core; this package only controls it.
"""
