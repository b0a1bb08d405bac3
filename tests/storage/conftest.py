"""Fixtures for the storage-backend tests: real servers from tests/servers.py, each on
127.0.0.1 and a free port, stopped at teardown. Missing server binaries skip the tests
on a developer's machine and fail them in CI (where .ci/run installs them)."""

from __future__ import annotations

import os

import pytest

import servers


def require_binary(path: str) -> None:
    if os.path.exists(path):
        return
    message = f"{path} missing (apt-get install docker-registry apache2-utils)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def make_registry(tmp_path):
    """``make_registry(auth=None|"htpasswd"|"token", tls=False, **kw)`` → a started Registry."""
    made: list[servers.Registry] = []

    def make(auth=None, tls=False, **kw) -> servers.Registry:
        require_binary(servers.REGISTRY_BIN)
        if auth == "htpasswd":
            require_binary("/usr/bin/htpasswd")
        registry = servers.Registry(tmp_path / f"registry-{len(made)}", auth=auth, tls=tls, **kw)
        made.append(registry)
        return registry.start()

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def registry(make_registry) -> servers.Registry:
    return make_registry()


@pytest.fixture
def registry_htpasswd(make_registry) -> servers.Registry:
    return make_registry(auth="htpasswd")


@pytest.fixture
def registry_token(make_registry) -> servers.Registry:
    return make_registry(auth="token")


@pytest.fixture
def registry_tls(make_registry) -> servers.Registry:
    return make_registry(tls=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One moto server per session (start-up costs about a second); use distinct keys."""
    with servers.S3Server(tmp_path_factory.mktemp("s3")) as s3:
        yield s3


@pytest.fixture
def proxy():
    with servers.ForwardProxy() as p:
        yield p
