"""The wire format of the CRI image service (k8s.io/cri-api, `runtime.v1`), as containerd's
CRI plugin serves it, declared as a `grpcwire` table: what our CRI client sends and what the
snapshotter's CRI proxy reads of a pull. `proto/runtime/v1/api.proto` says the same."""

from __future__ import annotations

from typing import Any

from nydus_hybrid.grpcwire import MAP, STRING, ProtoFile, Wire

# CRI (k8s.io/cri-api, runtime.v1): the image service's pull. PullImageRequest's field 3
# (the pod sandbox config) is left out: an image pull without a pod needs none.
CRI = ProtoFile(
    name="runtime/v1/api.proto",
    package="runtime.v1",
    messages={
        "ImageSpec": [("image", 1, STRING, False), ("annotations", 2, MAP, False)],
        "AuthConfig": [
            ("username", 1, STRING, False),
            ("password", 2, STRING, False),
            ("auth", 3, STRING, False),
            ("server_address", 4, STRING, False),
            ("identity_token", 5, STRING, False),
            ("registry_token", 6, STRING, False),
        ],
        "PullImageRequest": [("image", 1, "ImageSpec", False), ("auth", 2, "AuthConfig", False)],
        "PullImageResponse": [("image_ref", 1, STRING, False)],
        "RemoveImageRequest": [("image", 1, "ImageSpec", False)],
        "RemoveImageResponse": [],
    },
    services={
        "ImageService": {
            "PullImage": ("PullImageRequest", "PullImageResponse", False, False),
            "RemoveImage": ("RemoveImageRequest", "RemoveImageResponse", False, False),
        }
    },
)

FILES = [CRI]
WIRE = Wire(FILES)


def message(name: str) -> Any:
    return WIRE.message(CRI.qualified(name))
