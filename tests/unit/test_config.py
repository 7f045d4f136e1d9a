from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cri_shim import config
from cri_shim.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_round_trip() -> None:
    rendered = config.render_default()
    assert tomllib.loads(rendered)  # valid TOML
    # what `config default` prints loads back to exactly the built-in defaults
    parsed = config._build(config.Config, tomllib.loads(rendered), "default", "")
    assert parsed == config.Config()


def test_deploy_example_is_the_default() -> None:
    assert (REPO / "deploy" / "config.toml").read_text() == config.render_default()


def test_file_and_overrides(tmp_path: Path) -> None:
    p = write(tmp_path, '[server]\nlog_level = "debug"\nshutdown_timeout = 3\n[network]\ncni_bin_dirs = ["/x"]\n')
    cfg = config.load(p, {"server": {"socket": "/tmp/x/s.sock", "root": None}})
    assert cfg.server.log_level == "debug"
    assert cfg.server.shutdown_timeout == 3.0
    assert cfg.server.socket == "/tmp/x/s.sock"
    assert cfg.server.root == "/var/lib/cri-shim"  # None means "not overridden"
    assert cfg.network.cni_bin_dirs == ["/x"]


@pytest.mark.parametrize("text, message", [
    ('[server]\nsokcet = "/x"\n', "unknown key server.sokcet"),
    ('[srever]\n', "unknown key srever"),
    ('[server]\nshutdown_timeout = "soon"\n', "server.shutdown_timeout: expected a number, got string"),
    ('[server]\nlog_level = 3\n', "server.log_level: expected a string, got integer"),
    ('[network]\ncni_bin_dirs = "/opt/cni/bin"\n', "network.cni_bin_dirs: expected a list of a string"),
    ('[runtime]\ncgroup_driver = "nope"\n', "runtime.cgroup_driver: must be one of cgroupfs, systemd"),
    ('[runtime]\nksm = "always"\n', "runtime.ksm: must be one of off, mark, start, got 'always'"),
    ('[server]\nroot = "relative/dir"\n', "server.root: must be an absolute path"),
    ('[server]\nsocket = "/' + "a" * 120 + '.sock"\n', "server.socket: path is"),
    ('[server]\nmetrics_address = "nonsense"\n', "server.metrics_address: expected host:port"),
    ('server = 3\n', "[server]: expected a table, got integer"),
    ('[server\n', "not valid TOML"),
])
def test_bad_config_names_file_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value)
    assert message in str(e.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.toml")
