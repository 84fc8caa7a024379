"""Webhook delivery: ``POST <endpoint>`` with the rendered payload and configured headers.

Unlike Dkron's notifier, a header is split at its *first* colon (values may contain colons), a
header without one is a config error at start-up instead of a panic, every request has a timeout,
and a non-2xx answer counts as a failure (and is retried by the notifier).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

__all__ = ["WebhookError", "check_endpoint", "parse_headers", "post"]

MAX_ANSWER_BYTES = 64 * 1024


class WebhookError(Exception):
    pass


def check_endpoint(url: str, option: str) -> str:
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{option}: expected an http(s) URL, got {url!r}")
    return url.strip()


def parse_headers(items: Sequence[str], option: str) -> dict[str, str]:
    """Dkron's ``"Name: value"`` list (split at the first colon)."""
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = str(item).partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise ValueError(f"{option}: expected 'Name: value', got {item!r}")
        if "\n" in value or "\r" in value:
            raise ValueError(f"{option}: header {name} must be one line")
        headers[name] = value.strip()
    return headers


def post(url: str, body: str, headers: dict[str, str], timeout: float) -> int:
    """Send; return the status. Raises :class:`WebhookError` on a network error or non-2xx answer."""
    request = urllib.request.Request(url, data=body.encode("utf-8"), method="POST")
    lowered = {k.lower() for k in headers}
    if "content-type" not in lowered:
        stripped = body.lstrip()
        json_like = stripped.startswith(("{", "["))
        request.add_header("Content-Type", "application/json" if json_like else "text/plain; charset=utf-8")
    request.add_header("User-Agent", "dkron-notifier")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read(MAX_ANSWER_BYTES)
            return answer.status
    except urllib.error.HTTPError as err:
        raise WebhookError(f"{url} answered HTTP {err.code}") from None
    except urllib.error.URLError as err:
        raise WebhookError(f"{url}: {getattr(err.reason, 'strerror', None) or err.reason}") from None
    except (TimeoutError, OSError) as err:
        raise WebhookError(f"{url}: {err or type(err).__name__}") from None
