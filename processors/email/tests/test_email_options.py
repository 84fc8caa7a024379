"""The agent's mail-* options (core/src/dkron/config.py) as the email processor relies on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dkron.config import ConfigError, resolve
from dkron_processor_email.processor import SmtpSettings


@pytest.fixture(autouse=True)
def _no_stray_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # resolve() looks for ./dkron.yml


def test_defaults() -> None:
    config = resolve({}, {}, None)
    assert {name: config[name] for name in config if name.startswith("mail-")} == {
        "mail-host": "",
        "mail-port": 0,
        "mail-username": "",
        "mail-password": "",
        "mail-from": "",
        "mail-subject-prefix": "[Dkron]",
        "mail-tls": "starttls",
        "mail-timeout": 10.0,
        "mail-ca-file": "",
        "mail-payload": "",  # used by owner_email notifications (core), not by the processor
    }
    settings = SmtpSettings.from_settings(config)
    assert (settings.host, settings.effective_port, settings.tls, settings.timeout) == ("", 587, "starttls", 10.0)


def test_flags_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "dkron.yml"
    path.write_text("mail-host: smtp.example.test\nmail-port: 465\nmail-tls: TLS\nmail-timeout: 1m\n")
    env = {"DKRON_MAIL_PASSWORD": "from-env", "DKRON_MAIL_USERNAME": "dkron"}
    config = resolve({"mail-from": "cron@example.test"}, env, str(path))
    settings = SmtpSettings.from_settings(config)
    assert settings == SmtpSettings(
        host="smtp.example.test",
        port=465,
        username="dkron",
        password="from-env",
        mail_from="cron@example.test",
        tls="tls",
        timeout=60.0,
    )
    assert "from-env" not in repr(settings)


@pytest.mark.parametrize(
    ("flags", "option"),
    [
        ({"mail-tls": "ssl"}, "mail-tls"),
        ({"mail-port": "65536"}, "mail-port"),
        ({"mail-port": "-1"}, "mail-port"),
        ({"mail-port": "smtp"}, "mail-port"),
        ({"mail-timeout": "0"}, "mail-timeout"),
        ({"mail-timeout": "soon"}, "mail-timeout"),
    ],
)
def test_bad_values_name_the_option(flags: dict[str, str], option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        resolve(flags, {}, None)
