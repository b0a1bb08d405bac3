"""Replacing a daemon without failing a read (spec §4): how its state and ``/dev/fuse`` (or
cachefiles) fd travel from one daemon to the next.

- ``supervisor``: holds the latest state and fd between daemons (nydusd's wire protocol).
- ``handover``: the versioned state format a daemon writes and its successor reads, and the
  failover policies applied when taking it over.
- ``successor``: start a successor and have it take over (shared by the two sequences).
- ``upgrade``: sequence B, the hot upgrade of a running daemon.
- ``failover``: sequence C, after a crash, with a new process or a warm standby.
- ``errors``: ``SupervisorError``, ``UpgradeError``, ``StateError``.

The daemon (``nydus_hybrid.daemon``) and the manager (``nydus_hybrid.manager``) both use
this package; it uses neither.
"""
