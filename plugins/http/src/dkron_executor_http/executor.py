"""The ``http`` executor: sends one HTTP request per execution, like Dkron's http executor.

Output is the final response's status line (``HTTP/1.1 200 OK``) followed by its body, streamed
to the sink as it arrives (at most :data:`MAX_BODY` bytes are read). With ``debug`` the request
line and headers (``> ``) and the response headers (``< ``) come first, Authorization values
redacted. Redirects are followed (up to 10) as Go's client, and so Dkron, does.
"""

from __future__ import annotations

import base64
import codecs
import http.client
import logging
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutionResult, OutputSink
from dkron_executor_http.config import CONFIG_SCHEMA, HttpConfig, parse_config, parse_url, validate_config
from dkron_executor_http.transport import Cancelled, ConnectError, Guard, GuardedSocket, TimedOut, open_connection

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY", "MAX_REDIRECTS", "HttpExecutor"]

#: Most response-body bytes read per execution; the rest is not downloaded.
MAX_BODY = 1024 * 1024
MAX_REDIRECTS = 10
CHUNK = 64 * 1024
USER_AGENT = "dkron-executor-http/0.1"
REDACTED = "<redacted>"
_REDACT_IN_DEBUG = frozenset({"authorization", "proxy-authorization"})
# Headers Go's client (so Dkron) drops when a redirect leaves the original host and its subdomains.
_CREDENTIAL_HEADERS = frozenset({"authorization", "www-authenticate", "cookie", "cookie2"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)")


class _Failure(Exception):
    """The run fails with this one-line message (after the ``http: `` prefix)."""


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    host_header: str
    path: str
    basic_auth: str | None


def _target(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS[parts.scheme]
    ascii_host = host.encode("idna").decode("ascii")
    shown = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
    host_header = shown if port == _DEFAULT_PORTS[parts.scheme] else f"{shown}:{port}"
    auth = None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(parts.scheme, host, port, host_header, path, auth)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced (for messages and debug output)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{netloc[1]}"))


def _request_headers(
    method: str, target: _Target, headers: tuple[tuple[str, str], ...], body: bytes | None
) -> list[tuple[str, str]]:
    names = {name.lower() for name, _ in headers}
    out: list[tuple[str, str]] = []
    if "host" not in names:
        out.append(("Host", target.host_header))
    out.extend(headers)
    if target.basic_auth and "authorization" not in names:
        out.append(("Authorization", target.basic_auth))
    if "user-agent" not in names:
        out.append(("User-Agent", USER_AGENT))
    if body is not None or method in ("POST", "PUT", "PATCH"):
        out.append(("Content-Length", str(len(body or b""))))
    if "connection" not in names:
        out.append(("Connection", "close"))  # one request per connection, as Dkron (req.Close)
    return out


def _same_site(origin: str, url: str) -> bool:
    src = (urllib.parse.urlsplit(origin).hostname or "").lower()
    dst = (urllib.parse.urlsplit(url).hostname or "").lower()
    return dst == src or dst.endswith("." + src)


def _decode(body: bytes, response: http.client.HTTPResponse) -> str:
    charset = response.msg.get_content_charset() or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return body.decode(charset, errors="replace")


class _Exchange:
    """One execution: follows redirects, writes the output, decides success."""

    def __init__(self, cfg: HttpConfig, guard: Guard, output: OutputSink) -> None:
        self.cfg = cfg
        self.guard = guard
        self.output = output
        self._context: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        if self._context is not None:
            return self._context
        cfg = self.cfg
        try:
            context = ssl.create_default_context(cafile=cfg.tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise _Failure(f"cannot load tlsRootCAsFile {cfg.tls_ca_file}: {_reason(exc)}") from None
        if cfg.tls_no_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if cfg.tls_cert_file and cfg.tls_key_file:
            try:  # the password callback stops OpenSSL from prompting on the agent's terminal
                context.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file, password=lambda: b"")
            except (OSError, ssl.SSLError) as exc:
                raise _Failure(
                    f"cannot load the client certificate (tlsCertificateFile {cfg.tls_cert_file}, "
                    f"tlsCertificateKeyFile {cfg.tls_key_file}): {_reason(exc)}"
                ) from None
        context.set_alpn_protocols(["http/1.1"])
        self._context = context
        return context

    def run(self) -> ExecutionResult:
        cfg, guard, output = self.cfg, self.guard, self.output
        url, method, body, headers = cfg.url, cfg.method, cfg.body, cfg.headers
        for hop in range(MAX_REDIRECTS):  # like Go: at most 10 requests in all
            target = _target(url)
            context = self.tls_context() if target.scheme == "https" else None
            sock = open_connection(target.host, target.port, context, guard)
            try:
                guard.phase = "sending the request"
                lines = [f"{method} {target.path} HTTP/1.1"]
                lines += [f"{name}: {value}" for name, value in _request_headers(method, target, headers, body)]
                if cfg.debug:
                    output.write("".join(f"> {_redact(line)}\n" for line in lines) + ">\n")
                wire = GuardedSocket(sock, guard)
                wire.sendall("\r\n".join([*lines, "", ""]).encode("utf-8") + (body or b""))
                guard.phase = "waiting for the response"
                response = http.client.HTTPResponse(wire, method=method)  # type: ignore[arg-type]
                response.begin()
                status = f"HTTP/{'1.0' if response.version == 10 else '1.1'} {response.status} {response.reason}"
                location = response.getheader("Location")
                expected = cfg.expect_codes is not None and response.status in cfg.expect_codes
                if response.status in _REDIRECTS and location and not expected:
                    if hop == MAX_REDIRECTS - 1:
                        raise _Failure(f"stopped after {MAX_REDIRECTS} redirects")
                    next_url = urllib.parse.urljoin(url, location.strip())
                    if cfg.debug:
                        output.write(f"{status.rstrip()}\n{_response_headers(response)}")
                        output.write(f"(following the redirect to {redact_url(next_url)})\n")
                    try:
                        next_url = parse_url(next_url)
                    except ConfigError as exc:
                        raise _Failure(f"cannot follow the redirect to {redact_url(next_url)}: {exc}") from None
                    if response.status in (301, 302, 303) and method != "HEAD":
                        method, body = "GET", None
                    if not _same_site(cfg.url, next_url):
                        headers = tuple(h for h in headers if h[0].lower() not in _CREDENTIAL_HEADERS)
                    if _target(next_url).host_header != target.host_header:
                        headers = tuple(h for h in headers if h[0].lower() != "host")
                    url = next_url
                    continue
                output.write(f"{status.rstrip()}\n")
                if cfg.debug:
                    output.write(_response_headers(response))
                guard.phase = "reading the response body"
                return self._finish(response)
            finally:
                sock.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _finish(self, response: http.client.HTTPResponse) -> ExecutionResult:
        cfg, output, guard = self.cfg, self.output, self.guard
        keep = cfg.expect_body is not None
        kept = bytearray()
        total, truncated = 0, False
        while True:
            guard.check()  # cancellation is also checked inside every wait for data
            chunk = response.read1(CHUNK)
            if not chunk:
                break
            room = MAX_BODY - total
            if len(chunk) > room:
                chunk, truncated = chunk[:room], True
            if chunk:
                output.write(chunk)
                total += len(chunk)
                if keep:
                    kept += chunk
            if truncated:
                output.write(f"\n[http: response body truncated: only the first {MAX_BODY} bytes were read]\n")
                break
        if not truncated and response.length:  # Content-Length promised more than arrived
            raise _Failure(f"connection closed before the end of the response body ({response.length} bytes missing)")
        codes = cfg.expect_codes
        if (response.status not in codes) if codes else not 200 <= response.status < 300:
            expected = "2xx" if not codes else "one of " + ", ".join(str(c) for c in sorted(codes))
            reason = f" {response.reason}" if response.reason else ""
            return _fail(f"unexpected status {response.status}{reason} (expected {expected})")
        if cfg.expect_body is not None and not cfg.expect_body.search(_decode(bytes(kept), response)):
            searched = f" (only the first {MAX_BODY} bytes were searched)" if truncated else ""
            return _fail(f"response body does not match expectBody {cfg.expect_body.pattern!r}{searched}")
        return ExecutionResult(success=True)


def _redact(line: str) -> str:
    name, sep, _ = line.partition(":")
    if sep and name.strip().lower() in _REDACT_IN_DEBUG:
        return f"{name}: {REDACTED}"
    return line


def _response_headers(response: http.client.HTTPResponse) -> str:
    return "".join(f"< {name}: {value}\n" for name, value in response.getheaders()) + "<\n"


def _reason(exc: BaseException) -> str:
    """A short lower-case reason: OpenSSL's ``KEY_VALUES_MISMATCH`` becomes ``key values mismatch``."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    text = _SSL_LOCATION.sub("", _one_line(str(reason or exc or type(exc).__name__)))
    return text.replace("_", " ").lower() if text.isupper() else text.lower()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fail(message: str) -> ExecutionResult:
    return ExecutionResult(success=False, error=_one_line(f"http: {message}"))


class HttpExecutor:
    """Stateless, so one instance safely serves every execution on the agent concurrently."""

    #: The config's fields, for forms such as the web UI's job editor.
    config_schema = CONFIG_SCHEMA
    #: Header values often carry credentials (Authorization, API keys): shown as ******** by the API.
    secret_keys = frozenset({"headers"})

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        return validate_config(config)

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        try:
            cfg = parse_config(request.config)
        except ConfigError as exc:  # the core normally validated already; report, never raise
            return _fail(f"invalid config: {exc}")
        if cancel.cancelled:
            return _fail(f"killed: {cancel.reason}")
        guard = Guard(cancel, cfg.timeout)
        try:
            return _Exchange(cfg, guard, output).run()
        except Cancelled as exc:
            return _fail(f"killed: {exc}")
        except TimedOut as exc:
            return _fail(f"timed out after {cfg.timeout_text} ({exc})")
        except (ConnectError, _Failure) as exc:
            return _fail(str(exc))
        except ssl.SSLError as exc:
            hint = ""
            if not cfg.tls_cert_file and guard.phase != "reading the response body":
                hint = " (does the server require a client certificate? see tlsCertificateFile)"
            return _fail(f"TLS error {guard.phase}: {_reason(exc)}{hint}")
        except http.client.HTTPException as exc:
            detail = f": {exc}" if str(exc) else ""
            return _fail(f"invalid response ({guard.phase}): {type(exc).__name__}{detail}")
        except OSError as exc:
            return _fail(f"connection error {guard.phase}: {_reason(exc)}")
        except Exception as exc:
            log.exception("http: job %s failed unexpectedly", request.job_name)
            return _fail(f"internal error: {exc!r}")
