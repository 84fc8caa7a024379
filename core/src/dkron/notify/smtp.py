"""SMTP sending shared by e-mail notifications (core) and the ``email`` processor plugin.

Settings are the agent's ``mail-*`` options. :func:`send_message` never blocks longer than
``mail-timeout`` for the whole exchange, never falls back from STARTTLS to plain text, and never
sends a password unencrypted beyond loopback; errors are raised for the caller to log
(:func:`describe` renders one without the password).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

__all__ = ["DEFAULT_PORTS", "TLS_MODES", "SmtpSettings", "describe", "send_message"]

log = logging.getLogger("dkron.notify.smtp")

TLS_MODES = ("starttls", "tls", "none")
#: Port used when ``mail-port`` is 0, per ``mail-tls``.
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
DEFAULT_TIMEOUT = 10.0
DEFAULT_PREFIX = "[Dkron]"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        from dkron.config import parse_duration  # "10s", "1m30s": the agent's own syntax

        return parse_duration(text, "mail-timeout")


@dataclass(frozen=True)
class SmtpSettings:
    """The agent's ``mail-*`` options. ``password`` never appears in a repr or a log line."""

    host: str = ""
    port: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    mail_from: str = ""
    subject_prefix: str = DEFAULT_PREFIX
    tls: str = "starttls"
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str = ""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SmtpSettings:
        """Read ``registry.settings`` (typed by the agent; strings are accepted too, for tests).

        Raises ``ValueError`` naming the option when one is unusable.
        """

        def text(name: str, default: str = "") -> str:
            value = settings.get(name)
            return default if value is None else str(value).strip()

        port_raw = settings.get("mail-port") or 0
        try:
            port = int(port_raw)
        except (TypeError, ValueError):
            raise ValueError(f"mail-port: expected a port number, got {port_raw!r}") from None
        if port and not 0 < port < 65536:
            raise ValueError(f"mail-port: must be a port number 1-65535, got {port}")
        tls = text("mail-tls", "starttls").lower() or "starttls"
        if tls not in TLS_MODES:
            raise ValueError(f"mail-tls: must be one of starttls, tls, none, got {tls!r}")
        timeout_raw = settings.get("mail-timeout")
        timeout = DEFAULT_TIMEOUT if timeout_raw in (None, "") else _seconds(timeout_raw)
        if not timeout > 0:
            raise ValueError(f"mail-timeout: must be > 0, got {timeout_raw!r}")
        prefix = settings.get("mail-subject-prefix")
        return cls(
            host=text("mail-host"),
            port=port,
            username=text("mail-username"),
            password="" if settings.get("mail-password") is None else str(settings.get("mail-password")),
            mail_from=text("mail-from"),
            subject_prefix=DEFAULT_PREFIX if prefix is None else CONTROL.sub(" ", str(prefix)),
            tls=tls,
            timeout=timeout,
            ca_file=text("mail-ca-file"),
        )

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.tls]

    @property
    def sender(self) -> str:
        """The ``From`` header: ``mail-from`` (may be ``Name <addr>``), else ``dkron@<host name>``."""
        return self.mail_from or f"dkron@{socket.gethostname() or 'localhost'}"

    @property
    def envelope_sender(self) -> str:
        """The bare address for ``MAIL FROM``."""
        return parseaddr(self.sender)[1] or self.sender

    def redact(self, text: str) -> str:
        """``text`` without the password, should a server echo it back in an error."""
        return text.replace(self.password, "***") if self.password else text


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _deliver(settings: SmtpSettings, message: EmailMessage, recipients: list[str], holder: dict[str, Any]) -> list[str]:
    context: ssl.SSLContext | None = None
    if settings.tls != "none":
        context = ssl.create_default_context(cafile=settings.ca_file or None)
    local_name = socket.gethostname() or "localhost"  # never getfqdn(): a DNS look-up could stall
    address = (settings.host, settings.effective_port)
    client: smtplib.SMTP
    # Connecting (and the SMTPS handshake) happen in the constructor, each step bounded by timeout.
    if settings.tls == "tls":
        client = smtplib.SMTP_SSL(*address, local_hostname=local_name, timeout=settings.timeout, context=context)
    else:
        client = smtplib.SMTP(*address, local_hostname=local_name, timeout=settings.timeout)
    holder["client"] = client
    try:
        client.ehlo()
        if settings.tls == "starttls":
            # Raises SMTPNotSupportedError when the server does not offer it: never falls back.
            client.starttls(context=context)
            client.ehlo()
        if settings.username:
            client.login(settings.username, settings.password)
        refused = client.send_message(message, from_addr=settings.envelope_sender, to_addrs=recipients)
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
    finally:
        client.close()
    if refused:
        log.warning("the SMTP server refused %s", ", ".join(sorted(refused)))
    return [r for r in recipients if r not in refused]


def send_message(settings: SmtpSettings, message: EmailMessage, recipients: list[str]) -> list[str]:
    """Send ``message``; return the recipients the server accepted. Raises on any failure.

    The whole exchange is bounded by ``settings.timeout``: it runs in a worker thread, and when the
    deadline passes the connection is shut down and ``TimeoutError`` is raised, so a server that
    answers byte by byte cannot hold the agent longer than that.
    """
    if not settings.host:
        raise ValueError("mail-host is not set on this agent")
    if settings.username and settings.tls == "none" and not _is_loopback(settings.host):
        # As Go's net/smtp PLAIN authentication does: no password in clear over a network.
        raise ValueError(
            f"refusing to send the SMTP password unencrypted to {settings.host} (mail-tls=none); "
            "use mail-tls=starttls or tls"
        )
    holder: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            holder["accepted"] = _deliver(settings, message, recipients, holder)
        except BaseException as exc:  # handed to the caller's thread
            holder["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="dkron-smtp-send", daemon=True)
    worker.start()
    if not done.wait(settings.timeout):
        client = holder.get("client")
        sock = getattr(client, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the worker; it then closes the client
        raise TimeoutError(f"no complete SMTP exchange within {settings.timeout:g}s")
    if "error" in holder:
        raise holder["error"]
    return holder["accepted"]


def describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        detail = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        return f"{type(exc).__name__}: {exc.smtp_code} {' '.join(str(detail).split())}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
