"""``nydus-hybrid daemons list|show|upgrade`` and ``nydus-hybrid instances list``: readable
tables (``--json`` for scripts). Listing reads the store directly, so it works while the
manager is down; each daemon's live state is asked of the daemon itself. ``upgrade`` goes
through the running manager (it holds the supervisors)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

from nydus_hybrid.client import DaemonApiError, DaemonClient
from nydus_hybrid.manager.client import DIED, NydusdClient
from nydus_hybrid.manager.errors import ManagerError
from nydus_hybrid.manager.store import Store


def _store(root: str) -> Store:
    path = os.path.join(root, "nydus.db")
    if not os.path.exists(path):
        raise ManagerError(f"no manager state in {root} ({path} does not exist)")
    return Store(path)


def _live(api_socket: str) -> Dict[str, Any]:
    c = NydusdClient(api_socket, timeout=2.0)
    try:
        return c.get_daemon_info()
    except ManagerError:
        return {"state": DIED}
    finally:
        c.close()


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def daemons_list(root: str, as_json: bool) -> str:
    store = _store(root)
    try:
        daemons, instances = store.daemons(), store.instances()
    finally:
        store.close()
    out = []
    for d in daemons:
        n = sum(1 for i in instances if i["daemon_id"] == d["id"])
        out.append(dict(d, state=_live(d["api_socket"])["state"], instances=n))
    if as_json:
        return json.dumps(out, indent=2)
    return table(
        [
            (
                d["id"],
                d["daemon_mode"],
                d["pid"],
                d["state"],
                d["instances"],
                d.get("fs_driver", "fusedev"),
                d["mountpoint"] or "-",
            )
            for d in out
        ],
        ("ID", "MODE", "PID", "STATE", "INSTANCES", "DRIVER", "MOUNTPOINT"),
    )


def daemons_show(root: str, daemon_id: str, as_json: bool) -> str:
    store = _store(root)
    try:
        d = store.daemon(daemon_id)
        instances = [i for i in store.instances() if i["daemon_id"] == daemon_id]
    finally:
        store.close()
    if d is None:
        raise ManagerError(f"no daemon {daemon_id} in {root}")
    live = _live(d["api_socket"])
    doc = {"record": d, "live": live, "instances": instances}
    if as_json:
        return json.dumps(doc, indent=2)
    lines = [f"{k}: {v}" for k, v in sorted(d.items())]
    lines.append(f"state: {live['state']}")
    if "version" in live:
        lines.append(f"version: {live['version'].get('package_ver')} ({live['version'].get('git_commit', '')[:12]})")
    lines.append("")
    lines.append(instances_table(instances))
    return "\n".join(lines)


def instances_table(instances: List[Dict[str, Any]]) -> str:
    return table(
        [
            (i["seq"], i["snapshot_id"], i["daemon_id"], i["state"], i["mountpoint"], i.get("image_id", ""))
            for i in instances
        ],
        ("SEQ", "KEY", "DAEMON", "STATE", "MOUNTPOINT", "IMAGE"),
    )


def instances_list(root: str, as_json: bool) -> str:
    store = _store(root)
    try:
        instances = store.instances()
    finally:
        store.close()
    return json.dumps(instances, indent=2) if as_json else instances_table(instances)


def daemons_upgrade(root: str, daemon_id: Optional[str], nydusd: Optional[str], as_json: bool) -> str:
    sock = os.path.join(root, "system.sock")
    body = {k: v for k, v in (("daemon_id", daemon_id), ("nydusd", nydusd.split() if nydusd else None)) if v}
    try:
        c = DaemonClient(sock, timeout=120.0)
        try:
            done = c.put("/api/v1/daemons/upgrade", body)
        finally:
            c.close()
    except OSError as e:
        raise ManagerError(f"the manager is not running ({sock}: {e.strerror or e})") from e
    except DaemonApiError as e:
        raise ManagerError(f"upgrade failed: {e.message}") from e
    return json.dumps(done) if as_json else f"upgraded: {', '.join(done['upgraded']) or 'nothing'}"
