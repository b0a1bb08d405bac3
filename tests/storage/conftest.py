"""Fixtures for the storage-backend tests: real servers from tests/helpers/servers.py, each
on 127.0.0.1 and a free port, stopped at teardown, and the image they serve. Missing server
binaries skip the tests on a developer's machine and fail them in CI (where .ci/run
installs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest

from tests.helpers import servers
from tests.helpers.images import RegistryImage, build_registry_image


@pytest.fixture
def make_registry(tmp_path: Path) -> Iterator[Callable[..., servers.Registry]]:
    """``make_registry(auth=None|"htpasswd"|"token", tls=False, **kw)`` → a started Registry."""
    made: List[servers.Registry] = []

    def make(auth: Optional[str] = None, tls: bool = False, **kw: Any) -> servers.Registry:
        servers.require_binary(servers.REGISTRY_BIN)
        if auth == "htpasswd":
            servers.require_binary("/usr/bin/htpasswd")
        registry = servers.Registry(tmp_path / f"registry-{len(made)}", auth=auth, tls=tls, **kw)
        made.append(registry)
        return registry.start()

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(make_registry: Callable[..., servers.Registry]) -> servers.Registry:
    return make_registry()


@pytest.fixture
def registry_htpasswd(make_registry: Callable[..., servers.Registry]) -> servers.Registry:
    return make_registry(auth="htpasswd")


@pytest.fixture
def registry_token(make_registry: Callable[..., servers.Registry]) -> servers.Registry:
    return make_registry(auth="token")


@pytest.fixture
def registry_tls(make_registry: Callable[..., servers.Registry]) -> servers.Registry:
    return make_registry(tls=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.S3Server]:
    """One moto server per session (start-up costs about a second); use distinct keys."""
    with servers.S3Server(tmp_path_factory.mktemp("s3")) as s3:
        yield s3


@pytest.fixture
def proxy() -> Iterator[servers.ForwardProxy]:
    with servers.ForwardProxy() as p:
        yield p


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> RegistryImage:
    """An image of 6 incompressible 1 MiB files, two small ones and a directory, in
    256 KiB chunks (one per module: tests/helpers/images.py build_registry_image)."""
    return build_registry_image(tmp_path_factory.mktemp("reg-img"))
