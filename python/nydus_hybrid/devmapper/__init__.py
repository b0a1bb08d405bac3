"""The device-mapper thin-pool manager (replacing containerd's devmapper snapshotter): pool
creation and checks, thin devices per snapshot, snapshots of snapshots, and the metadata
that survives restarts. Device-mapper is absent from this machine's kernel, so its tests
boot the shared test kernel in a VM (``../shared/kernels``).

Planned modules: ``pool`` (create, resize, check a thin pool over loop or block devices),
``device`` (thin devices and their snapshots through ``dmsetup`` messages), ``store``
(the device metadata in SQLite), ``snapshotter`` (the containerd-facing side, built on the
same snapshots interface as ``nydus_hybrid.snapshotter``).
"""
