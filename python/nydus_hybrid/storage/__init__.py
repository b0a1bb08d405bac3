"""zos-style node storage (replacing threefold zos's storage and flist modules): volumes on
the node's disks (btrfs subvolumes with quotas, pools across devices) and flists, images
mounted read-only from a Nydus bootstrap through our daemon with a writable overlay per
container.

Not to be confused with the blob backends (registry, S3, localfs), which live in the Rust
core (``rust/src/storage``) and are configured through nydusd configs. Planned modules:
``pool`` (disks and their filesystems), ``volume`` (subvolumes and quotas), ``flist``
(flist mounts on top of ``nydus_hybrid.manager``).
"""
