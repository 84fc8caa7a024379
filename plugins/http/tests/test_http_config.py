"""Validation of executor_config at submission: every error names the key to fix."""

from __future__ import annotations

import pytest

from dkron.contracts import ConfigError
from dkron_executor_http import HttpExecutor
from dkron_executor_http.config import parse_config, parse_headers, parse_timeout

BASE = {"method": "GET", "url": "http://127.0.0.1:8080/health"}


def _error(config: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        HttpExecutor().validate(config)
    return info.value


def test_minimal_config_is_normalised() -> None:
    config = HttpExecutor().validate({"method": " post ", "url": " https://Example.com/a?q=é#frag"})
    assert config["method"] == "POST"
    assert config["url"] == "https://Example.com/a?q=%C3%A9"
    cfg = parse_config(config)
    assert (cfg.timeout, cfg.timeout_text, cfg.expect_codes, cfg.debug) == (30.0, "30s", None, False)


def test_booleans_are_spelled_out() -> None:
    config = HttpExecutor().validate({**BASE, "debug": "1", "tlsNoVerifyPeer": "False"})
    assert (config["debug"], config["tlsNoVerifyPeer"]) == ("true", "false")


@pytest.mark.parametrize(
    ("config", "key", "fragment"),
    [
        ({"url": "http://x/"}, "method", "required"),
        ({"method": "", "url": "http://x/"}, "method", "required"),
        ({"method": "GE T", "url": "http://x/"}, "method", "not a valid HTTP method"),
        ({"method": "GET\r\nX: y", "url": "http://x/"}, "method", "not a valid HTTP method"),
        ({"method": "GET"}, "url", "required"),
        ({**BASE, "url": "ftp://example.com/file"}, "url", "http:// or https://"),
        ({**BASE, "url": "example.com/path"}, "url", "http:// or https://"),
        ({**BASE, "url": "http:///path"}, "url", "no host"),
        ({**BASE, "url": "http://example.com:99999/"}, "url", "port"),
        ({**BASE, "url": "http://example.com/a b"}, "url", "spaces"),
        ({**BASE, "headers": '["X-Token abc"]'}, "headers", "has no colon"),
        ({**BASE, "headers": '["Bad Name: v"]'}, "headers", "not a valid header name"),
        ({**BASE, "headers": '[": v"]'}, "headers", "not a valid header name"),
        ({**BASE, "headers": '["X-A: one\\r\\nX-Injected: two"]'}, "headers", "line break"),
        ({**BASE, "headers": '["Content-Length: 3"]'}, "headers", "computed"),
        ({**BASE, "headers": "X-A: b"}, "headers", "not valid JSON"),
        ({**BASE, "headers": "[1]"}, "headers", "string"),
        ({**BASE, "headers": '"X-A: b"'}, "headers", "JSON array"),
        ({**BASE, "headers": '{"X-A": ["b"]}'}, "headers", "must be a string"),
        ({**BASE, "timeout": "abc"}, "timeout", "duration"),
        ({**BASE, "timeout": "10 s"}, "timeout", "duration"),
        ({**BASE, "timeout": "0"}, "timeout", "greater than zero"),
        ({**BASE, "timeout": "-5s"}, "timeout", "duration"),
        ({**BASE, "expectCode": "20"}, "expectCode", "not an HTTP status code"),
        ({**BASE, "expectCode": "200,abc"}, "expectCode", "not an HTTP status code"),
        ({**BASE, "expectCode": "1200"}, "expectCode", "not an HTTP status code"),
        ({**BASE, "expectCode": ","}, "expectCode", "no status codes"),
        ({**BASE, "expectBody": "([unclosed"}, "expectBody", "regular expression"),
        ({**BASE, "debug": "yes"}, "debug", "true or false"),
        ({**BASE, "tlsNoVerifyPeer": "on"}, "tlsNoVerifyPeer", "true or false"),
        ({**BASE, "tlsCertificateFile": "/etc/c.pem"}, "tlsCertificateKeyFile", "both"),
        ({**BASE, "tlsCertificateKeyFile": "/etc/c.key"}, "tlsCertificateFile", "both"),
        ({**BASE, "tlsCertificateFile": "c.pem", "tlsCertificateKeyFile": "/c.key"}, "tlsCertificateFile", "absolute"),
        ({**BASE, "tlsRootCAsFile": "certs/ca.pem"}, "tlsRootCAsFile", "absolute"),
        ({**BASE, "expectcode": "200"}, "expectcode", "did you mean 'expectCode'"),
        ({**BASE, "command": "ls"}, "command", "known keys"),
    ],
)
def test_invalid_config_names_the_key(config: dict[str, str], key: str, fragment: str) -> None:
    error = _error(config)
    assert error.key == key
    assert fragment in str(error)


def test_headers_split_on_the_first_colon_only() -> None:
    headers = parse_headers('["X-Time: 12:30:00", "Authorization: Bearer a:b:c", "X-Empty:", "X-Pad:   v  "]')
    assert headers == (("X-Time", "12:30:00"), ("Authorization", "Bearer a:b:c"), ("X-Empty", ""), ("X-Pad", "v"))


def test_headers_as_a_json_object() -> None:
    headers = parse_headers('{"Content-Type": "application/json", "X-Retry": 3, "X-Flag": true}')
    assert headers == (("Content-Type", "application/json"), ("X-Retry", "3"), ("X-Flag", "true"))
    assert parse_headers("") == parse_headers("  ") == parse_headers("[]") == ()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("2.5", 2.5), ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0)],
)
def test_timeout_accepts_seconds_and_go_durations(text: str, seconds: float) -> None:
    assert parse_timeout(text) == seconds


def test_expect_code_is_an_exact_list() -> None:
    cfg = parse_config({**BASE, "expectCode": " 200, 204 ,"})
    assert cfg.expect_codes == frozenset({200, 204})


def test_timeout_text_says_seconds() -> None:
    assert parse_config({**BASE, "timeout": "5"}).timeout_text == "5s"
    assert parse_config({**BASE, "timeout": "1m"}).timeout_text == "1m"
