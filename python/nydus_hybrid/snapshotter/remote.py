"""Nydus images under the snapshotter (spec A8, A9.2 "remote"): a container's snapshot over
a Nydus image reads the image through a RAFS instance of the image's meta layer (the
bootstrap layer, which containerd unpacked as `image/image.boot`), mounted through the daemon
manager and read lazily from the registry the image reference names.

The instance is keyed by the meta layer's snapshot id, so every container of one image
shares it; it goes when the meta layer is removed."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from nydus_hybrid import blobs, log
from nydus_hybrid.convert.reference import parse_registry
from nydus_hybrid.errors import AuthError, InvalidArgumentError, NydusError
from nydus_hybrid.manager.errors import ManagerError
from nydus_hybrid.manager.manager import Manager
from nydus_hybrid.snapshotter import backend, labels
from nydus_hybrid.snapshotter.errors import FailedPrecondition, Unavailable
from nydus_hybrid.snapshotter.keychain import Keychain

BOOTSTRAP = "image/image.boot"  # where the bootstrap layer puts it inside its snapshot
USERNS = "-userns-"  # instance keys of id-mapped mounts: <meta id>-userns-<mapping>


class RemoteFs:
    def __init__(
        self,
        manager: Manager,
        cache_dir: str,
        plain_http: Sequence[str] = (),
        keychain: Optional[Keychain] = None,
        template: Optional[Dict[str, Any]] = None,
        mirrors_dir: str = "",
        skip_verify: bool = False,
    ) -> None:
        self.manager = manager
        self.keychain = keychain or Keychain()
        self.cache_dir = cache_dir
        self.plain_http = set(plain_http)
        self.template = template or backend.DEFAULT_TEMPLATE
        self.mirrors_dir = mirrors_dir
        self.skip_verify = skip_verify

    def daemon_config(self, lbls: Dict[str, str]) -> Dict[str, Any]:
        """The nydusd config of an image's instance (`backend.instance_config`): the
        template's backend, a registry one pointed at the image reference's host and
        repository, and the shared blob cache. Credentials come from the keychain (labels,
        then CRI capture), else the registry backend's own lookup (docker's config.json)."""
        ref_text = lbls.get(labels.CRI_IMAGE_REF) or lbls.get(labels.STARGZ_REF)
        if not ref_text:
            raise FailedPrecondition(
                f"the Nydus meta layer has no image reference ({labels.CRI_IMAGE_REF}); pull it with the CRI labels"
            )
        try:
            ref = parse_registry(ref_text)
        except InvalidArgumentError as e:
            raise FailedPrecondition(f"{labels.CRI_IMAGE_REF}: {e}") from None
        return backend.instance_config(
            self.template,
            ref,
            self.cache_dir,
            plain_http=ref.api_host in self.plain_http,
            skip_verify=self.skip_verify,
            auth=self.keychain.backend_auth(ref.api_host, lbls),
            mirror_list=backend.mirrors(self.mirrors_dir, ref) if self.mirrors_dir else [],
        )

    def mount(
        self, meta_id: str, bootstrap: str, lbls: Dict[str, str], idmap: Optional[labels.IdMapping] = None
    ) -> str:
        """The instance's mountpoint, mounting it first if needed (idempotent). An id
        mapping gets an instance of its own (`<id>-userns-<mapping>`, as nydus-snapshotter's
        `<id>-userns-<host uid>`) whose daemon reports owners shifted."""
        config = self.daemon_config(lbls)
        key = meta_id
        if idmap is not None:
            config["id_mapping"] = {"uid": idmap.uid, "gid": idmap.gid}
            key = f"{meta_id}{USERNS}{idmap.key()}"
        if key not in self.manager.instances:
            self._check_reachable(config, lbls)
        try:
            rec = self.manager.mount(key, lbls.get(labels.CRI_MANIFEST_DIGEST, meta_id), bootstrap, json.dumps(config))
        except ManagerError as e:
            raise Unavailable(f"mounting the Nydus image of snapshot {meta_id}: {e}") from None
        mountpoint: str = rec["mountpoint"]
        return mountpoint

    def _check_reachable(self, config: Dict[str, Any], lbls: Dict[str, str]) -> None:
        """Before a new instance: does the registry answer, and hold the image's meta layer
        (a HEAD of it, with the instance's credentials and mirrors)? A container whose data
        cannot be read would start and then fail its first read; refused now, it is one
        clear error and nothing is made. Other backends are not probed."""
        digest = lbls.get(labels.CRI_LAYER_DIGEST, "")
        if not digest.startswith("sha256:") or backend.backend_type(config) != "registry":
            return
        try:
            found = blobs.registry_client(config).blob_exists(digest)
        except AuthError as e:
            raise FailedPrecondition(f"the image's registry refused its credentials: {e}") from None
        except NydusError as e:
            raise Unavailable(f"the image's registry cannot be reached: {e}") from None
        if not found:
            raise FailedPrecondition(f"the image's registry does not hold its meta layer {digest}")

    def umount(self, meta_id: str) -> None:
        """Unmount every instance of the meta layer (its plain and id-mapped ones)."""
        for key in [k for k in self.manager.instances if k == meta_id or k.startswith(meta_id + USERNS)]:
            try:
                self.manager.umount(key)
            except ManagerError as e:
                raise Unavailable(f"unmounting the Nydus image of snapshot {meta_id}: {e}") from None

    def renew_credentials(self, meta_labels: Dict[str, Dict[str, str]]) -> List[str]:
        """Credential renewal (spec A11, `credential_renewal_interval`): look up every
        mounted instance's credentials again (its meta layer's labels, then the CRI capture,
        then docker's config.json) and hand the changed ones to its daemon. `meta_labels`
        maps meta layer snapshot ids to their labels. Returns the instances updated; one
        failing instance is logged and does not stop the others."""
        updated = []
        for key in list(self.manager.instances):
            lbls = meta_labels.get(key.partition(USERNS)[0])
            ref_text = (lbls or {}).get(labels.CRI_IMAGE_REF) or (lbls or {}).get(labels.STARGZ_REF)
            if not lbls or not ref_text:
                continue
            try:
                host = parse_registry(ref_text).api_host
                fields = self.keychain.backend_auth(host, lbls)
                if not fields:
                    from_file = blobs.docker_config_auth(host)
                    fields = {"auth": from_file} if from_file else {}
                if fields and self.manager.update_auth(key, fields):
                    updated.append(key)
            except (NydusError, ManagerError, OSError, ValueError) as e:
                log.event("credential_renewal_failed", logging.WARNING, key=key, error=str(e))
        return updated

    def cache_usage(self, blob_id: str) -> Tuple[int, int]:
        """Bytes allocated and files in the blob cache for one blob (its data, chunk map
        and meta files)."""
        size = files = 0
        try:
            entries = os.scandir(self.cache_dir)
        except FileNotFoundError:
            return 0, 0
        with entries:
            for e in entries:
                if e.name.startswith(blob_id) and e.is_file(follow_symlinks=False):
                    size += e.stat(follow_symlinks=False).st_blocks * 512
                    files += 1
        return size, files

    def gc_cache(self, used: Set[str]) -> List[str]:
        """Delete the blob cache's files (data, chunk map, meta) of every blob not in
        `used`; returns the names deleted."""
        gone: List[str] = []
        try:
            names = os.listdir(self.cache_dir)
        except FileNotFoundError:
            return gone
        for name in names:
            blob_id = name.split(".", 1)[0]
            if len(blob_id) != 64 or blob_id in used or not all(c in "0123456789abcdef" for c in blob_id):
                continue
            try:
                os.unlink(os.path.join(self.cache_dir, name))
                gone.append(name)
            except OSError as e:
                log.event("cache_gc_failed", file=name, error=e.strerror or str(e))
        if gone:
            log.event("cache_gc", files=len(gone))
        return gone

    def close(self) -> None:
        self.manager.close(stop_daemons=False)


def meta_ancestor(chain: Sequence[Any]) -> Optional[Any]:
    """The nearest snapshot in `chain` (infos, nearest first) that is a Nydus meta layer."""
    return next((i for i in chain if labels.is_nydus_meta_layer(i.labels)), None)
