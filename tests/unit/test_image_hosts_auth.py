"""hosts.toml (containerd's format) and registry credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cri_shim.errors import FailedPrecondition, InvalidArgument
from cri_shim.images import auth, hosts


def write(config: Path, registry: str, text: str) -> None:
    (config / registry).mkdir(parents=True, exist_ok=True)
    (config / registry / "hosts.toml").write_text(text)


def test_without_settings_the_registry_is_used_over_https(tmp_path: Path) -> None:
    cfg = hosts.load("", "registry.k8s.io")
    assert [h.url for h in cfg.hosts] == ["https://registry.k8s.io"]
    assert cfg.hosts[0].api_root == "/v2" and not cfg.hosts[0].is_mirror
    assert hosts.load(str(tmp_path), "docker.io").hosts[0].url == "https://registry-1.docker.io"


def test_mirrors_come_first_in_file_order_then_the_upstream(tmp_path: Path) -> None:
    write(tmp_path, "registry.k8s.io", """
server = "https://registry.k8s.io"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
[host."https://mirror.example/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["ca.pem"]
  [host."https://mirror.example/prefix".header]
    x-test = "1"
[host."https://raw.example/api"]
  override_path = true
""")
    cfg = hosts.load(str(tmp_path), "registry.k8s.io")
    assert [h.url for h in cfg.hosts] == ["http://127.0.0.1:5000", "https://mirror.example", "https://raw.example",
                                         "https://registry.k8s.io"]
    first, second, third, upstream = cfg.hosts
    assert first.insecure and first.is_mirror and first.capabilities == {"pull", "resolve"}
    assert second.api_root == "/prefix/v2" and second.skip_verify and second.capabilities == {"pull"}
    assert second.ca_files == (str(tmp_path / "registry.k8s.io" / "ca.pem"),)
    assert second.headers == (("x-test", "1"),)
    assert third.api_root == "/api"
    assert not upstream.is_mirror and upstream.capabilities == {"pull", "resolve", "push"}


def test_port_directories_and_the_default_directory(tmp_path: Path) -> None:
    write(tmp_path, "myreg.local_5000_", 'server = "http://myreg.local:5000"\n')
    assert hosts.load(str(tmp_path), "myreg.local:5000").hosts[0].url == "http://myreg.local:5000"
    write(tmp_path, "_default", '[host."http://127.0.0.1:9"]\n')
    assert [h.url for h in hosts.load(str(tmp_path), "other.example").hosts] == [
        "http://127.0.0.1:9", "https://other.example"]


@pytest.mark.parametrize("text, fragment", [
    ("server = 5", "must be a URL string"),
    ('server = "ftp://x"', "not an http:// or https:// URL"),
    ('[host."http://m"]\ncapabilities = ["fly"]', "unknown capabilities"),
    ('[host."http://m"]\nskip_verify = "yes"', "skip_verify must be true or false"),
    ('[host."http://m".header]\nAuthorization = "Basic x"', "Authorization is not allowed"),
    ("mirrors = []", "unknown key"),
    ("server = ", "cannot read"),
])
def test_bad_hosts_toml_names_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    write(tmp_path, "r.example", text)
    with pytest.raises(FailedPrecondition) as err:
        hosts.load(str(tmp_path), "r.example")
    assert fragment in err.value.message and "hosts.toml" in err.value.message


def test_challenge_parsing() -> None:
    header = ('Bearer realm="https://auth.example/token",service="registry.example",'
              'scope="repository:a/b:pull,push", Basic realm="x\\"y"')
    bearer, basic = auth.parse_challenges(header)
    assert bearer.scheme == "bearer" and bearer.params == {
        "realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"}
    assert basic.scheme == "basic" and basic.params == {"realm": 'x"y'}
    assert auth.parse_challenges("") == []


def test_request_credentials_only_for_the_registry_they_name() -> None:
    encoded = base64.b64encode(b"alice:s3cret").decode()
    creds = auth.from_request("registry.example", "", "", encoded, "", "", "")
    assert creds is not None and (creds.username, creds.password) == ("alice", "s3cret")
    assert "s3cret" not in repr(creds) and "s3cret" not in str(creds)
    assert auth.from_request("registry.example", "a", "b", "", "https://registry.example/v2/", "", "") is not None
    assert auth.from_request("registry.example", "a", "b", "", "other.example", "", "") is None
    assert auth.from_request("docker.io", "a", "b", "", "https://index.docker.io/v1/", "", "") is not None
    assert auth.from_request("registry.example", "", "", "", "", "", "") is None
    with pytest.raises(InvalidArgument) as err:
        auth.from_request("r", "", "", "!!notbase64!!", "", "", "")
    assert "!!notbase64!!" not in err.value.message


def test_different_credentials_have_different_fingerprints() -> None:
    a = auth.Credentials("u", "p1")
    assert a.fingerprint() == auth.Credentials("u", "p1").fingerprint() != auth.Credentials("u", "p2").fingerprint()


def test_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "mirror.example:5000": {"username": "m", "password": "mp"},
        "tok.example": {"identitytoken": "refresh"},
    }}))
    hub = auth.from_file(str(path), "docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hub", "pw")
    mirror = auth.from_file(str(path), "mirror.example:5000")
    assert mirror is not None and mirror.password == "mp"
    tok = auth.from_file(str(path), "tok.example")
    assert tok is not None and tok.identity_token == "refresh"
    assert auth.from_file(str(path), "unknown.example") is None
    assert auth.from_file(str(tmp_path / "missing.json"), "docker.io") is None
    path.write_text("{broken")
    with pytest.raises(FailedPrecondition, match="credentials file"):
        auth.from_file(str(path), "docker.io")
