"""Shared machinery for the nydus-hybrid benchmarks (conftest.py, the test_*.py modules,
run_all.py, fusebench.py). Import each name from the module that owns it:

* ``env``: the size and round knobs (NYDUS_BENCH_*), ``bench_dir()``, ``machine_info()``,
  ``build_identity()``;
* ``report``: MiB / GiB, ``mib()``, ``fmt()``, ``cell()``, ``pct()``;
* ``corpus``: the generated inputs (corpus, big file, tiny / storage / partial / daemon
  trees), ``scan_files``, ``fresh_dir``, ``dir_bytes``;
* ``pagecache``: ``drop_caches``, ``evict``, ``warm_files``, ``warm_page_cache``;
* ``measure``: ``run_measured`` (wall, CPU, peak RSS of child processes), RSS sampling,
  ``/proc`` readings of live processes, ``reap``;
* ``tools``: the build tools compared, ``run_tool``, ``Summary``;
* ``reads``: the reader workloads (``Image.read`` vs plain reads);
* ``registry``: docker-registry, build and push, cold / partial fetches vs curl;
* ``daemon``: daemon start-up timing against bare interpreter starts, import profile;
* ``daemon_load``: daemon API latency under FUSE read load.

The modules import each other in that order only (no cycles); the test helpers
(``tests.helpers``) are imported where used, so a missing optional dependency only skips
the benchmarks that need it.
"""
