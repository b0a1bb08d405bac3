"""The nydusd-compatible daemon process: ``python -m nydus_hybrid.daemon``. Nothing else of
the package lives here; the manager and the upgrade tools drive it through its HTTP API.

Modules: ``main`` (entry point: nydusd's command line, logs, limits), ``args`` (that command
line), ``state`` (INIT/READY/RUNNING/STOPPED), ``base`` (what both daemons share: events,
hot-reload config, handover steps, the API loop), ``fusedev`` (the ``fuse`` daemon) with
``fuse_service`` (one FUSE mount and its RAFS instances), ``singleton`` (the fscache daemon)
with ``fscache_service`` (the cachefiles device and its blob entries), ``service`` (the
interface both services implement for the API), ``api`` (httptools on the unix socket;
the contract is ``openapi.yaml``), ``errors`` (API errors, one JSON shape). All file data stays
in the Rust core; this package only controls it.
"""
