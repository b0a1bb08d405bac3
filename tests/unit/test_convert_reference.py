"""Image names (`nydus_hybrid.convert.reference`) and untrusted descriptors and documents
(`oci.checked_descriptor`, `oci.parse_document`): Docker's defaults, the three kinds of
name, and, for any input, either a parse or InvalidArgumentError / DigestMismatchError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nydus_hybrid import errors
from nydus_hybrid.convert import oci, reference
from nydus_hybrid.convert.reference import ArchiveRef, LayoutRef, RegistryRef

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, want",
    [
        ("busybox", RegistryRef("docker.io", "library/busybox", "latest", None)),
        ("user/app:1.0", RegistryRef("docker.io", "user/app", "1.0", None)),
        ("127.0.0.1:5000/debian", RegistryRef("127.0.0.1:5000", "debian", "latest", None)),
        ("localhost/a/b:c", RegistryRef("localhost", "a/b", "c", None)),
        (f"reg.io/x@{DIGEST}", RegistryRef("reg.io", "x", None, DIGEST)),
        (f"reg.io/x:t@{DIGEST}", RegistryRef("reg.io", "x", "t", DIGEST)),
        ("oci:/srv/layout", LayoutRef("/srv/layout", None)),
        ("oci:/srv/layout:v1", LayoutRef("/srv/layout", "v1")),
        ("/srv/plain", LayoutRef("/srv/plain", None)),
        ("docker-archive:/tmp/a.tar", ArchiveRef("/tmp/a.tar")),
    ],
)
def test_names_parse_with_dockers_defaults(text, want):
    assert reference.parse(text) == want


def test_docker_hub_requests_go_to_its_api_host_and_a_digest_wins():
    ref = reference.parse_registry(f"busybox:1@{DIGEST}")
    assert ref.api_host == "registry-1.docker.io" and ref.reference == DIGEST
    assert reference.parse_registry("127.0.0.1:5000/x").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "text, why",
    [
        ("http://reg.io/x", "without a scheme"),
        ("reg.io/Upper", "bad repository name"),
        ("reg.io/x:bad tag", "bad tag"),
        ("reg.io/x@sha256:1234", "64 hex"),
        ("reg.io/x@md5:" + "a" * 32, "64 hex"),
        ("reg.io/../x", "bad repository name"),
        ("oci:", "needs a directory"),
        ("docker-archive:", "needs a file"),
    ],
)
def test_bad_names_say_what_is_wrong(text, why):
    with pytest.raises(errors.InvalidArgumentError, match=why):
        reference.parse(text)


@given(st.text(max_size=80))
def test_any_name_parses_or_is_refused_cleanly(text):
    try:
        ref = reference.parse(text)
    except errors.InvalidArgumentError:
        return
    if isinstance(ref, RegistryRef):
        # What it prints parses back to the same reference.
        assert reference.parse_registry(str(ref)) == ref
        assert ".." not in ref.repo.split("/")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=70),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
        max_leaves=8,
    )
)
def test_any_descriptor_is_checked_or_refused(desc):
    try:
        digest, size = oci.checked_descriptor(desc)
    except errors.InvalidArgumentError:
        return
    assert digest.startswith("sha256:") and len(digest) == 71
    assert size is None or (isinstance(size, int) and size >= 0)


@given(st.binary(max_size=200))
def test_any_document_bytes_parse_to_an_object_or_are_refused(data):
    try:
        doc = oci.parse_document(data, "doc")
    except errors.InvalidArgumentError:
        return
    assert isinstance(doc, dict)


def test_documents_are_bounded_and_checked_against_their_digest():
    body = json.dumps({"a": 1}).encode()
    assert oci.parse_document(body, oci.sha256_digest(body), len(body)) == {"a": 1}
    with pytest.raises(errors.DigestMismatchError):
        oci.parse_document(body, DIGEST)
    with pytest.raises(errors.DigestMismatchError):
        oci.parse_document(body, oci.sha256_digest(body), len(body) + 1)
    with pytest.raises(errors.InvalidArgumentError, match="more than"):
        oci.parse_document(b" " * (oci.MAX_DOCUMENT + 1), "big")
    with pytest.raises(errors.InvalidArgumentError, match="not a JSON object"):
        oci.parse_document(b"[1]", "list")
