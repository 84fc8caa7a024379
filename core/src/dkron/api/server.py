"""The HTTP server: waitress for plain HTTP, a threaded server with TLS for ``--http-tls-*``.

waitress has no TLS. With a certificate configured, the API is served by werkzeug's threaded
WSGI server over a TLS socket instead. The handshake is deferred to the connection's own
thread (``do_handshake_on_connect=False``) and bounded by the per-connection timeout, so a
client that connects and stalls cannot hold up the accept loop.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from dkron.config import split_addr

CONNECTION_TIMEOUT = 60  # seconds a connection may stay idle (also bounds the TLS handshake)


class _Handler(WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT

    def log_request(self, code: Any = "-", size: Any = "-") -> None:  # waitress does not log requests either
        pass


class TlsServer:
    """The subset of waitress's server interface the agent uses: ``run()`` and ``close()``."""

    def __init__(self, app: Any, host: str, port: int, cert: str, key: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"http-tls: cannot load {cert} / {key}: {exc}") from None
        try:
            self.server = ThreadedWSGIServer(host, port, app, handler=_Handler)
        except SystemExit:  # werkzeug exits on a bind error; the agent reports it instead
            raise RuntimeError(f"cannot bind HTTP to {host}:{port}: address in use or not local") from None
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.server.ssl_context = context  # makes wsgi.url_scheme "https"
        logging.getLogger("werkzeug").setLevel(logging.WARNING)

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.5)

    def close(self) -> None:
        threading.Thread(target=self.server.shutdown, daemon=True).start()
        self.server.server_close()


def create_http_server(app: Any, config: dict[str, Any]) -> Any:
    host, port = split_addr(config["http-addr"], "http-addr")
    if config.get("http-tls-cert"):
        return TlsServer(app, host, port, config["http-tls-cert"], config["http-tls-key"])
    from waitress.server import create_server

    return create_server(
        app,
        host=host,
        port=port,
        threads=16,
        ident="dkron",
        channel_timeout=60,
        clear_untrusted_proxy_headers=True,
        max_request_header_size=config.get("max-header-bytes", 65_536),
    )
