"""Fixtures: real SMTP servers (aiosmtpd) on free 127.0.0.1 ports, capturing what they receive.

``smtp_factory(auth={"user": "pass"}, tls="none" | "starttls" | "tls")`` starts one (stopped after
the test); ``smtp_server`` is a plain one. TLS uses ``tls_files``: a throw-away CA and a server
certificate for 127.0.0.1 and localhost, made with ``cryptography``. Helpers: ``email_support.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("aiosmtpd", reason="the email tests need aiosmtpd (the plugin's test dependency group)")

from email_support import SmtpServer, TlsFiles, make_tls_files, start_smtp


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("smtp-tls"))


@pytest.fixture
def smtp_factory(tls_files: TlsFiles) -> Iterator[Callable[..., SmtpServer]]:
    started: list[SmtpServer] = []

    def make(*, auth: dict[str, str] | None = None, tls: str = "none") -> SmtpServer:
        server = start_smtp(tls_files, auth=auth, tls=tls)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def smtp_server(smtp_factory: Callable[..., SmtpServer]) -> SmtpServer:
    """A plain SMTP server: no TLS, no AUTH."""
    return smtp_factory()
