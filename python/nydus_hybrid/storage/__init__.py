"""zos-style node storage (replacing threefold zos's storage and flist modules): volumes on
the node's disks (btrfs subvolumes with quotas, pools across devices) and flists, images
mounted read-only from a Nydus bootstrap through our daemon with a writable overlay per
container.

Not to be confused with the blob backends (registry, S3, localfs), which live in the Rust
core (``rust/src/storage``) and are configured through nydusd configs. The modules:

- ``errors``: ``StorageError`` and its typed subclasses (``NotEnoughSpace(disk_type)``...);
- ``names``: name and size validation;
- ``policy``: ``DiskType``, ``RaidProfile`` and ``StoragePolicy`` (how disks make pools);
- ``btrfs``: the btrfs-progs, blkid and kernel counter wrapper;
- ``pools``: pools made on the disks and found again from their btrfs labels;
- ``module``: ``StorageModule``, zos's volume allocator (``create_filesystem``...);
- ``vdisk``: ``VDiskModule``, sparse virtual disk files on an ssd pool;
- ``cli``: ``nydus-hybrid storage`` (init, create, release, list, update, total, broken,
  monitor);
- ``flist``: flist mounts over volumes of the storage module.
"""
