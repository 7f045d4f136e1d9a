from __future__ import annotations

from cri_shim.api import api_pb2 as pb
from cri_shim.server.interceptor import describe_ids, redacted


def test_credentials_are_redacted_recursively() -> None:
    req = pb.PullImageRequest(image=pb.ImageSpec(image="r.example/x:1"), auth=pb.AuthConfig(
        username="alice", password="s3cret", auth="YWxpY2U6czNjcmV0", identity_token="idt", registry_token="rt",
        server_address="r.example"))
    text = str(redacted(req))
    for secret in ("s3cret", "YWxpY2U6czNjcmV0", "idt", "rt\""):
        assert secret not in text
    assert "alice" in text and "r.example" in text
    assert req.auth.password == "s3cret"  # the original is untouched


def test_ids_on_the_log_line() -> None:
    assert describe_ids(pb.StopContainerRequest(container_id="0123456789abcdef0123")) == "container_id=0123456789abc"
    req = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="web", namespace="ns")))
    assert describe_ids(req) == "name=ns/web"
    assert describe_ids(pb.ImageStatusRequest(image=pb.ImageSpec(image="busybox"))) == "image=busybox"
