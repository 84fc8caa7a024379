"""dkron.pluginkit: the config helpers plugins share, each raising ConfigError naming the key."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from dkron.contracts import ConfigError
from dkron.pluginkit import (
    FALSE_SPELLINGS,
    TRUE_SPELLINGS,
    cached,
    check_keys,
    parse_bool,
    parse_duration,
    parse_forward,
)


def error_of(fn, *args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return info.value


# -- parse_bool / parse_forward ------------------------------------------------------------------


@pytest.mark.parametrize("text", sorted(TRUE_SPELLINGS))
def test_true_spellings_of_strconv_parsebool(text: str) -> None:
    assert parse_bool(text, "debug") is True
    assert parse_bool(f"  {text}\n", "debug") is True


@pytest.mark.parametrize("text", sorted(FALSE_SPELLINGS))
def test_false_spellings_of_strconv_parsebool(text: str) -> None:
    assert parse_bool(text, "debug") is False
    assert parse_bool(f" {text} ", "debug") is False


@pytest.mark.parametrize("text", ["yes", "no", "on", "tRUE", "2", "true!"])
def test_other_spellings_are_refused_naming_the_key(text: str) -> None:
    error = error_of(parse_bool, text, "tlsEnable")
    assert error.key == "tlsEnable"
    assert str(error) == f"tlsEnable must be true or false, got {text!r}"


def test_empty_is_the_default_or_an_error_without_one() -> None:
    assert parse_bool("", "debug", default=False) is False
    assert parse_bool("   ", "debug", default=True) is True
    assert str(error_of(parse_bool, "", "shell")) == "shell must be true or false, got ''"
    assert error_of(parse_bool, " ", "shell").key == "shell"


@pytest.mark.parametrize("value", [None, True, 1, ["true"]])
def test_a_value_that_is_not_a_string_is_refused(value: object) -> None:
    error = error_of(parse_bool, value, "debug", default=False)
    assert (error.key, str(error)) == ("debug", f"debug must be true or false, got {value!r}")


def test_forward_defaults_to_false() -> None:
    assert parse_forward({}) is False
    assert parse_forward({"forward": ""}) is False
    assert parse_forward({"forward": " T "}) is True
    assert parse_forward({"forward": "FALSE", "other": "x"}) is False
    error = error_of(parse_forward, {"forward": "yes"})
    assert (error.key, str(error)) == ("forward", "forward must be true or false, got 'yes'")


# -- parse_duration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m0.5s", 120.5),
        ("100us", 1e-4),
        ("100µs", 1e-4),  # U+00B5 MICRO SIGN
        ("100μs", 1e-4),  # U+03BC GREEK SMALL LETTER MU
        ("10ns", 1e-8),
        (".5h", 1800.0),
        ("1.m", 60.0),
        ("  10s  ", 10.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("1.", 1.0),
        (".5", 0.5),
    ],
)
def test_go_durations_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text, "timeout") == pytest.approx(seconds)


NOT_DURATIONS = ["", "  ", "abc", "10 s", "1e3", "inf", "s", "1x", "5s5", "-5s", "+5s", "1h 30m", "1d"]


@pytest.mark.parametrize("text", NOT_DURATIONS)
def test_what_is_not_a_duration(text: str) -> None:
    error = error_of(parse_duration, text, "timeout")
    assert error.key == "timeout"
    assert str(error) == f"timeout must be seconds or a duration such as 30s or 500ms, got {text!r}"


@pytest.mark.parametrize("text", ["0", "0s", "0.0ms", "9" * 400 + "s"])
def test_zero_and_infinite_are_not_greater_than_zero(text: str) -> None:
    error = error_of(parse_duration, text, "wait")
    assert (error.key, str(error)) == ("wait", f"wait must be greater than zero, got {text!r}")


def test_without_plain_seconds_a_bare_number_is_no_duration() -> None:
    assert parse_duration("10s", "timeout", seconds=False) == 10.0
    error = error_of(parse_duration, "10", "timeout", seconds=False)
    assert str(error) == "timeout must be a duration such as 30s, 1h30m or 500ms, got '10'"


def test_a_pattern_narrows_what_plain_seconds_look_like() -> None:
    strict = re.compile(r"\d+(\.\d+)?")
    assert parse_duration("2.5", "timeout", seconds=strict) == 2.5
    for text in ("1.", ".5"):
        assert "must be seconds or a duration" in str(error_of(parse_duration, text, "timeout", seconds=strict))


def test_signed_durations_fail_the_lower_bound_when_negative() -> None:
    assert parse_duration("+5s", "timeout", signed=True) == 5.0
    for text in ("-5s", "-0s"):
        assert str(error_of(parse_duration, text, "timeout", signed=True)) == (
            f"timeout must be greater than zero, got {text!r}"
        )
    assert "must be seconds or a duration" in str(error_of(parse_duration, "-", "timeout", signed=True))


def test_bounds_are_named_as_durations() -> None:
    assert parse_duration("24h", "timeout", maximum=86400.0) == 86400.0
    assert str(error_of(parse_duration, "86401", "timeout", maximum=86400.0)) == (
        "timeout must be at most 24h, got '86401'"
    )
    assert str(error_of(parse_duration, "2h", "timeout", maximum=5400.0)) == "timeout must be at most 1h30m, got '2h'"
    assert str(error_of(parse_duration, "1s", "timeout", maximum=0.25)) == "timeout must be at most 250ms, got '1s'"
    assert parse_duration("0", "grace", minimum=0) == 0.0
    assert parse_duration("5s", "grace", minimum=5) == 5.0
    assert str(error_of(parse_duration, "4s", "grace", minimum=5)) == "grace must be at least 5s, got '4s'"
    assert str(error_of(parse_duration, "1m", "grace", minimum=90)) == "grace must be at least 1m30s, got '1m'"


def test_the_expected_text_can_be_replaced() -> None:
    error = error_of(parse_duration, "soon", "timeout", expected="a duration such as 10s or 1m30s")
    assert str(error) == "timeout must be a duration such as 10s or 1m30s, got 'soon'"


# -- check_keys -----------------------------------------------------------------------------------

KEYS = ("method", "url", "timeout", "expectCode")


def test_known_keys_pass() -> None:
    check_keys({"url": "x", "timeout": "1s"}, KEYS)
    check_keys({}, KEYS)


def test_a_near_miss_gets_a_hint() -> None:
    error = error_of(check_keys, {"url": "x", "expectcode": "200"}, KEYS)
    assert (error.key, str(error)) == ("expectcode", "unknown key 'expectcode'; did you mean 'expectCode'?")


def test_otherwise_the_keys_are_listed_in_their_order_or_sorted_for_a_set() -> None:
    error = error_of(check_keys, {"command": "ls"}, KEYS)
    assert str(error) == "unknown key 'command' (known keys: method, url, timeout, expectCode)"
    error = error_of(check_keys, {"command": "ls"}, frozenset(KEYS))
    assert str(error) == "unknown key 'command' (known keys: expectCode, method, timeout, url)"


def test_the_hint_can_be_turned_off_and_the_listing_replaced() -> None:
    error = error_of(check_keys, {"tiemout": "1s"}, KEYS, suggest=False)
    assert str(error) == "unknown key 'tiemout' (known keys: method, url, timeout, expectCode)"
    error = error_of(check_keys, {"tiemout": "1s"}, KEYS, suggest=False, known="the echo executor knows 'message'")
    assert str(error) == "unknown key 'tiemout' (the echo executor knows 'message')"


def test_the_first_bad_key_in_config_order_is_reported() -> None:
    assert error_of(check_keys, {"zzz": "1", "aaa": "2"}, KEYS, suggest=False).key == "zzz"


def test_aliases_are_accepted_unlisted_and_hint_at_their_key() -> None:
    aliases = {"message.base64": "message.base64Body"}
    allowed = ("message.body", "message.base64Body")
    check_keys({"message.base64": "aGk="}, allowed, aliases=aliases)
    assert str(error_of(check_keys, {"x": "1"}, allowed, aliases=aliases)) == (
        "unknown key 'x' (known keys: message.body, message.base64Body)"
    )
    error = error_of(check_keys, {"message.base6": "aGk="}, ("message.body",), aliases=aliases)
    assert str(error) == "unknown key 'message.base6'; did you mean 'message.base64Body'?"


def test_unsupported_keys_get_their_own_message() -> None:
    unsupported = {"su": "su is not supported by this executor"}
    error = error_of(check_keys, {"su": "root"}, ("command", "su"), unsupported=unsupported)
    assert (error.key, str(error)) == ("su", "su is not supported by this executor")


def test_strings_only() -> None:
    check_keys({"url": 5}, KEYS)
    error = error_of(check_keys, {"url": "x", "timeout": 5}, KEYS, strings=True)
    assert (error.key, str(error)) == ("timeout", "timeout must be a string")


# -- cached ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    items: tuple[tuple[str, str], ...]


class Builder:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, config: Mapping[str, str]) -> Parsed:
        self.calls += 1
        if "bad" in config:
            raise ConfigError("bad is bad", key="bad")
        check_keys(config, ("a", "b", "message", "payload"), strings=True)
        return Parsed(tuple(config.items()))


def test_equal_configs_share_one_parse() -> None:
    build = Builder()
    parse = cached(build)
    first = parse({"a": "1", "b": "2"})
    assert parse({"b": "2", "a": "1"}) is first
    assert build.calls == 1
    assert first.items == (("a", "1"), ("b", "2"))  # built from the sorted items
    assert parse.cache_info().hits == 1
    assert parse({"a": "other"}) is not first and build.calls == 2
    parse.cache_clear()
    assert parse({"a": "1", "b": "2"}) == first and build.calls == 3
    assert parse.__wrapped__ is build


def test_errors_are_not_cached() -> None:
    build = Builder()
    parse = cached(build)
    for _ in range(2):
        assert error_of(parse, {"bad": "1"}).key == "bad"
    assert build.calls == 2


def test_big_configs_bypass_the_cache() -> None:
    build = Builder()
    parse = cached(build, max_chars=10)
    big = {"message": "x" * 11}
    assert parse(big) == parse(big) and build.calls == 2
    assert parse.cache_info().currsize == 0
    small = {"message": "x" * 10}
    assert parse(small) is parse(small) and build.calls == 3


def test_size_measures_what_matters() -> None:
    build = Builder()
    parse = cached(build, max_chars=4, size=lambda config: len(config.get("payload", "")))
    config = {"message": "long message", "payload": "abcd"}
    assert parse(config) is parse(dict(config))
    assert build.calls == 1
    parse({"payload": "abcde"})
    parse({"payload": "abcde"})
    assert build.calls == 3


def test_no_limit() -> None:
    build = Builder()
    parse = cached(build, max_chars=None)
    big = {"message": "x" * 100_000}
    assert parse(big) is parse(big) and build.calls == 1


def test_unhashable_or_non_string_values_are_reported_by_the_build() -> None:
    build = Builder()
    parse = cached(build, maxsize=8)
    for value in (["list"], {"a": 1}, 5, None):
        error = error_of(parse, {"a": "1", "b": value})
        assert (error.key, str(error)) == ("b", "b must be a string")
    assert parse.cache_info().currsize == 0


def test_lru_bound() -> None:
    build = Builder()
    parse = cached(build, maxsize=2)
    for value in ("1", "2", "3"):
        parse({"a": value})
    assert parse.cache_info().currsize == 2
    parse({"a": "1"})  # evicted, built again
    assert build.calls == 4


def test_threads_share_the_cache() -> None:
    parse = cached(Builder())
    results: list[Parsed] = []
    threads = [threading.Thread(target=lambda: results.append(parse({"a": "1"}))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(result == results[0] for result in results)


def test_guarded_execute_turns_bad_config_kills_and_bugs_into_failed_results(caplog):
    from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult
    from dkron.pluginkit import guarded_execute

    def parse(config: Mapping[str, str]) -> str:
        if "url" not in config:
            raise ConfigError("url is required", key="url")
        return config["url"]

    def request(**config: str) -> ExecutionRequest:
        return ExecutionRequest(job_name="j", run_id="j@1", config=config)

    ran = []
    ok = guarded_execute(
        "demo", request(url="x"), CancelToken(), parse, lambda url: ran.append(url) or ExecutionResult(True)
    )
    assert ok.success and ran == ["x"]
    bad = guarded_execute("demo", request(), CancelToken(), parse, lambda url: ExecutionResult(True))
    assert not bad.success and bad.error.startswith("demo: invalid config: url is required")
    killed = CancelToken()
    killed.cancel("killed by user")
    early = guarded_execute(
        "demo", request(url="x"), killed, parse, lambda url: ran.append("again") or ExecutionResult(True)
    )
    assert not early.success and early.error == "demo: killed: killed by user" and ran == ["x"]

    def bug(url: str) -> ExecutionResult:
        raise KeyError("oops")

    broken = guarded_execute("demo", request(url="x"), CancelToken(), parse, bug)
    assert not broken.success and broken.error == "demo: internal error: KeyError('oops')"
    assert "demo: job j failed unexpectedly" in caplog.text
