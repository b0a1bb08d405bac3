"""Image names as `convert` takes them: `oci:DIR[:TAG]` (an OCI image layout),
`docker-archive:FILE` (a `docker save` tarball), or a registry reference
`[HOST[:PORT]/]REPO[:TAG][@DIGEST]` with Docker's defaults (`docker.io`, `library/`,
`latest`)."""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Optional, Union

from nydus_hybrid.errors import InvalidArgumentError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# distribution/reference's grammar, in short: lower-case path components joined by
# separators, a tag of word characters, a digest of `alg:hex`.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class RegistryRef:
    host: str  # as written (`docker.io` for Docker Hub); `api_host` is where requests go
    repo: str
    tag: Optional[str]
    digest: Optional[str]

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def reference(self) -> str:
        """What `/v2/<repo>/manifests/<reference>` is asked for: the digest when pinned."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return (
            f"{self.host}/{self.repo}"
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )


@dataclass(frozen=True)
class LayoutRef:
    path: str
    tag: Optional[str]


@dataclass(frozen=True)
class ArchiveRef:
    path: str


ImageRef = Union[RegistryRef, LayoutRef, ArchiveRef]


def _bad(text: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(errno.EINVAL, f"image reference {text!r}: {why}")


def parse_registry(text: str) -> RegistryRef:
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise _bad(text, "the digest must be sha256:<64 hex digits>")
    first, sep, remainder = rest.partition("/")
    # The first component is a host when it looks like one (Docker's rule).
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, path = first, remainder
    else:
        host, path = DOCKER_HUB, rest
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise _bad(text, f"bad tag {tag!r}")
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _REPO.match(path):
        raise _bad(text, f"bad repository name {path!r} (lower-case letters, digits and separators)")
    if tag is None and digest is None:
        tag = "latest"
    return RegistryRef(host, path, tag, digest)


def parse(text: str) -> ImageRef:
    """An image name in any of the three forms; a one-line error names what is wrong."""
    if text.startswith("oci:"):
        path, tag = text[4:], None
        # `oci:DIR:TAG`, as skopeo writes it; a path may itself hold colons only before the tag.
        head, sep, tail = path.rpartition(":")
        if sep and head and "/" not in tail and _TAG.match(tail):
            path, tag = head, tail
        if not path:
            raise _bad(text, "oci: needs a directory")
        return LayoutRef(path, tag)
    if text.startswith("docker-archive:"):
        path = text[len("docker-archive:") :]
        if not path:
            raise _bad(text, "docker-archive: needs a file")
        return ArchiveRef(path)
    if text.startswith(("/", "./", "../")):
        return LayoutRef(text, None)  # a plain path is a layout directory
    if "://" in text:
        raise _bad(text, "write the registry reference without a scheme (use --plain-http for http)")
    return parse_registry(text)
