"""Security options: flags go together, files must be readable, retention is parsed."""

from __future__ import annotations

import pytest

from dkron.config import ConfigError, resolve


@pytest.fixture(autouse=True)
def _no_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # resolve() looks for ./dkron.yml


def test_defaults_are_safe():
    config = resolve({}, {}, None)
    assert config["acl-enabled"] is False  # off, but the agent says so loudly
    assert config["cors-allowed-origins"] == []
    assert config["audit-retention-count"] == 100_000 and config["audit-retention-age-seconds"] == 0.0


def test_acl_enabled_from_the_environment():
    assert resolve({}, {"DKRON_ACL_ENABLED": "true"}, None)["acl-enabled"] is True


def test_audit_retention_age_is_a_duration():
    assert resolve({"audit-retention-age": "2h"}, {}, None)["audit-retention-age-seconds"] == 7200
    with pytest.raises(ConfigError, match="audit-retention-age"):
        resolve({"audit-retention-age": "soon"}, {}, None)
    with pytest.raises(ConfigError, match="audit-retention-count"):
        resolve({"audit-retention-count": "-1"}, {}, None)


def test_tls_files_go_together_and_must_be_readable(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    with pytest.raises(ConfigError, match="http-tls-key"):
        resolve({"http-tls-cert": str(pem)}, {}, None)
    with pytest.raises(ConfigError, match="cannot read"):
        resolve({"http-tls-cert": str(pem), "http-tls-key": str(tmp_path / "missing.pem")}, {}, None)
    with pytest.raises(ConfigError, match="grpc-tls"):
        resolve({"grpc-tls-ca": str(pem), "grpc-tls-cert": str(pem)}, {}, None)
    config = resolve({"grpc-tls-ca": str(pem), "grpc-tls-cert": str(pem), "grpc-tls-key": str(pem)}, {}, None)
    assert config["grpc-tls-ca"] == str(pem)


def test_an_agent_beyond_loopback_may_use_certificates_instead_of_the_key(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    tls = {"grpc-tls-ca": str(pem), "grpc-tls-cert": str(pem), "grpc-tls-key": str(pem)}
    assert resolve({"bind-addr": "10.0.0.5", **tls}, {}, None)["bind-addr"] == "10.0.0.5"
    with pytest.raises(ConfigError, match="encrypt"):  # a server's Raft port still needs --encrypt
        resolve({"bind-addr": "10.0.0.5", "server": "true", **tls}, {}, None)
