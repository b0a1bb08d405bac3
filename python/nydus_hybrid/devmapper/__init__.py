"""containerd's devmapper snapshotter on a device-mapper thin pool: every snapshot is a
thin device, children are thin snapshots of their parents. `dmsetup` drives the real
dmsetup, `metadata` records devices and ids, `pool` runs each operation with its states and
rollbacks, `snapshotter` serves containerd's Snapshots API through `nydus_hybrid.snapshotter`'s
server, `cli` is `nydus-hybrid devmapper`. Device-mapper is absent from this machine's
kernel, so its tests boot the shared test kernel in a VM (``../shared/kernels``)."""
