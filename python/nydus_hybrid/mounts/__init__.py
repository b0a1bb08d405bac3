"""How an image reaches the kernel, one module per kind of mount.

- ``fuse``: the Rust FUSE server (``Mount``): worker threads answer ``/dev/fuse`` from the
  RAFS reader without entering Python.
- ``fuse_shim``: a fusepy-style ``Operations`` class served by mfusepy, the slow scriptable
  path (needs the ``[fuse]`` extra).
- ``erofs``: file-backed EROFS mounts of an exported disk (Linux 6.12+).
- ``fscache``: EROFS over fscache: the ``fsid=`` mount, the cachefiles device and its
  on-demand server, and where the kernel keeps each cookie's cache file.
- ``mountinfo``: the one reader of ``/proc/self/mountinfo`` (never a ``stat`` of a mount,
  which would be a FUSE request nobody may be serving).
- ``syscall``: the one ``mount(2)``/``umount2(2)`` wrapper.
"""
