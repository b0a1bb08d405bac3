"""The containerd remote snapshotter (next: issue 16; contract in the shared spec's
orchestration Part A): containerd's ``containerd.services.snapshots.v1.Snapshots`` gRPC
service on a unix socket, the remote-snapshot protocol that lets a layer skip its download,
the snapshot store, the mounts containerd hands to runc, and the system controller.

It sits on top of the daemon manager (``nydus_hybrid.manager``): a snapshot of a Nydus
layer becomes a RAFS instance through ``Manager.mount``, served by whichever fs driver the
manager runs. Planned modules, one per concept as in nydus-snapshotter: ``service`` (the
gRPC servicer and its error codes), ``snapshot`` (the SQLite metadata of snapshots),
``labels`` (the ``containerd.io/snapshot/*`` and Nydus annotations), ``mounts`` (the
overlay and bind mounts returned to containerd), ``config`` (its TOML configuration).
"""
