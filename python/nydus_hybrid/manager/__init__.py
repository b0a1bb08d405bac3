"""The daemon manager: the layer that owns daemons on a node, as nydus-snapshotter's
``daemon``, ``rafs``, ``manager``, ``store`` and ``supervisor`` packages do.

Modules: ``store`` (SQLite: daemons and instances), ``daemon`` (one daemon: record, command
line, API calls with the snapshotter's budgets), ``monitor`` (liveness through an idle API
connection), ``manager`` (modes, mounts, recover policies, recovery after a restart),
``controller`` (the manager's HTTP API on ``<root>/system.sock``), ``__main__`` (the process:
``python -m nydus_hybrid.manager``).
"""

from nydus_hybrid.manager.errors import DaemonStartError, ManagerError, StoreError
from nydus_hybrid.manager.manager import Manager

__all__ = ["DaemonStartError", "Manager", "ManagerError", "StoreError"]
