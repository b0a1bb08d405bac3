"""The containerd remote snapshotter (issue 16, in progress; the contract is the shared
spec's orchestration Part A): containerd's ``containerd.services.snapshots.v1.Snapshots``
gRPC service on a unix socket, the remote-snapshot protocol that lets a layer skip its
download, the snapshot store and the mounts containerd hands to runc.

Modules, one per concept as in nydus-snapshotter: ``wire`` (the messages and methods,
declared from ``proto/``), ``errors`` (containerd's error classes and their gRPC codes),
``metastore`` (snapshot metadata in SQLite with containerd's storage semantics),
``filters`` (containerd's filter expressions for List), ``labels`` (the
``containerd.io/snapshot/*`` and Nydus labels), ``snapshot`` (the snapshots: directories,
mount shapes, the remote-layer protocol), ``service`` (the gRPC servicer), ``server`` (the
process). Next: a container's snapshot over a Nydus image mounts it through the daemon
manager (``Manager.mount``), and containerd itself drives it.
"""
