"""Helpers for the email processor's tests: a capturing aiosmtpd server and a throw-away CA.

(A module of its own, with a name no other test folder uses, so the tests can import its types.)
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from dkron.testing import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class SmtpServer:
    """A running test server; ``messages`` is what it accepted, in order."""

    port: int
    messages: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    controller: Any = None
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_messages(self, count: int = 1, timeout: float = 15.0) -> list[Received]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Agent settings pointing at this server (as ``registry.settings`` carries them)."""
        return {
            "mail-host": "127.0.0.1",
            "mail-port": self.port,
            "mail-from": "dkron@example.test",
            "mail-subject-prefix": "[Dkron]",
            "mail-tls": "none",
            "mail-timeout": 5.0,
            **overrides,
        }

    def stop(self) -> None:
        self.controller.stop()


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        auth = session.auth_data
        login = auth.login.decode() if session.authenticated and isinstance(auth, LoginPassword) else None
        tls = session.ssl is not None or smtp.transport.get_extra_info("ssl_object") is not None  # STARTTLS, SMTPS
        received = Received(envelope.mail_from, list(envelope.rcpt_tos), message, tls, login)
        with self.server._arrived:
            self.server.messages.append(received)
            self.server._arrived.notify_all()
        return "250 OK"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def start_smtp(tls_files: TlsFiles, *, auth: dict[str, str] | None = None, tls: str = "none") -> SmtpServer:
    """Start a server on a free 127.0.0.1 port.

    ``auth={"user": "password"}`` requires AUTH with those credentials (over plain SMTP too when
    ``tls="none"``: aiosmtpd's ``auth_require_tls`` is turned off for that). ``tls="starttls"``
    offers and requires STARTTLS; ``tls="tls"`` speaks SMTPS (TLS from the first byte).
    """
    server = SmtpServer(port=free_port())
    kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": server.port, "ready_timeout": 10.0}
    if auth is not None:

        def authenticator(smtp: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            user, password = data.login.decode(), data.password.decode()
            ok = auth.get(user) == password
            server.logins.append((user, ok))
            # handled=False: aiosmtpd answers the failure itself (535).
            return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

        # aiosmtpd's auth_require_tls only counts STARTTLS: with SMTPS it would hide AUTH although
        # the whole session is encrypted.
        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=tls == "starttls")
    if tls == "starttls":
        kwargs.update(tls_context=tls_files.server_context(), require_starttls=True)
    elif tls == "tls":
        kwargs["ssl_context"] = tls_files.server_context()
    server.controller = Controller(_Handler(server), **kwargs)
    server.controller.start()
    return server


def make_tls_files(folder: Path) -> TlsFiles:
    """A CA and a server certificate it signed, for 127.0.0.1 and localhost (PEM files in ``folder``)."""
    from dkron.testca import CA

    ca = CA(folder, "email")
    leaf = ca.issue("localhost")
    return TlsFiles(ca.path, leaf.cert, leaf.key)
