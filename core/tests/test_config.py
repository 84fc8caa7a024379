"""Agent configuration: flag > DKRON_* env > dkron.yml > default, and clear errors naming the option."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import pytest

from dkron.config import OPTIONS_BY_NAME, ConfigError, env_name, parse_duration, resolve


@pytest.fixture(autouse=True)
def _no_stray_config_file(tmp_path, monkeypatch):
    # resolve() looks for ./dkron.yml: never let the repository's cwd leak into these tests.
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, text: str, name: str = "config.yml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# One row per option kind: (option, flag value, env value, file YAML value, expected for each source).
PRECEDENCE = [
    # bool
    ("log-json", "true", "false", "true", (True, False, True, False)),
    ("ui", "true", "false", "false", (True, False, False, True)),
    # int
    ("rpc-port", "7001", "7002", "7003", (7001, 7002, 7003, 6868)),
    ("retention-count", "11", "12", "13", (11, 12, 13, 100)),
    # list
    ("join", ["a:1", "b:2"], "c:3,d:4", "[e:5]", (["a:1", "b:2"], ["c:3", "d:4"], ["e:5"], [])),
    # tags
    (
        "tag",
        ["role=web", "dc=one"],
        "role=db",
        "{role: cache, zone: z9}",
        ({"role": "web", "dc": "one"}, {"role": "db"}, {"role": "cache", "zone": "z9"}, {}),
    ),
    # duration
    ("catchup-window", "90s", "2m", "1h30m", (90.0, 120.0, 5400.0, 60.0)),
    ("shutdown-timeout", "500ms", "5", "45s", (0.5, 5.0, 45.0, 30.0)),
    # str
    ("node-name", "from-flag", "from-env", "from-file", ("from-flag", "from-env", "from-file", None)),
]


@pytest.mark.parametrize(("option", "flag", "env", "file", "expected"), PRECEDENCE, ids=[r[0] for r in PRECEDENCE])
def test_flag_beats_env_beats_file_beats_default(tmp_path, option, flag, env, file, expected):
    path = write_config(tmp_path, f"{option}: {file}\n")
    env_vars = {env_name(option): env}
    want_flag, want_env, want_file, want_default = expected

    assert resolve({option: flag}, env_vars, path)[option] == want_flag
    assert resolve({}, env_vars, path)[option] == want_env
    assert resolve({}, {}, path)[option] == want_file
    default = resolve({}, {}, None)[option]
    if want_default is None:  # node-name defaults to the host name
        assert default and default != "from-file"
    else:
        assert default == want_default == OPTIONS_BY_NAME[option].default


def test_each_source_only_overrides_the_options_it_sets(tmp_path):
    path = write_config(tmp_path, "rpc-port: 7003\nlog-json: true\ntags:\n  role: cache\n")
    config = resolve({"retention-count": "5"}, {"DKRON_RPC_PORT": "7002"}, path)
    assert config["retention-count"] == 5  # flag
    assert config["rpc-port"] == 7002  # env over file
    assert config["log-json"] is True  # file (Dkron spells the tag map "tags" in dkron.yml)
    assert config["tag"] == {"role": "cache"}
    assert config["raft-port"] == 6869  # default


def test_config_file_comes_from_dkron_config_env_or_the_working_directory(tmp_path):
    elsewhere = write_config(tmp_path, "rpc-port: 7100\n", "elsewhere.yml")
    assert resolve({}, {"DKRON_CONFIG": elsewhere})["rpc-port"] == 7100
    write_config(tmp_path, "rpc-port: 7200\n", "dkron.yml")  # cwd is tmp_path
    assert resolve({}, {})["rpc-port"] == 7200
    assert resolve({}, {"DKRON_CONFIG": elsewhere})["rpc-port"] == 7100


def test_bool_spellings(tmp_path):
    for text in ("1", "true", "YES", "on", "True"):
        assert resolve({"log-json": text}, {})["log-json"] is True
    for text in ("0", "false", "no", "OFF"):
        assert resolve({"log-json": text}, {})["log-json"] is False
    # a bare --flag arrives as "true" from argparse; YAML gives real booleans
    assert resolve({}, {}, write_config(tmp_path, "log-json: yes\n"))["log-json"] is True


def test_an_empty_yaml_value_means_unset_not_the_text_none(tmp_path):
    config = resolve({}, {}, write_config(tmp_path, "encrypt:\nadvertise-addr:\nrpc-port:\n"))
    assert config["encrypt"] == ""
    assert config["advertise-addr"] == ""
    assert config["rpc-port"] == 6868


# -- errors ------------------------------------------------------------------------------------


def test_unknown_option_in_the_file_is_named(tmp_path):
    path = write_config(tmp_path, "rpc-port: 7000\nnot-an-option: 1\nbogus_thing: x\n")
    with pytest.raises(ConfigError) as err:
        resolve({}, {}, path)
    message = str(err.value)
    assert "not-an-option" in message and "bogus_thing" in message and path in message


def test_odd_yaml_keys_are_reported_not_crashed_on(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown option.*1"):
        resolve({}, {}, write_config(tmp_path, "1: a\nrpc-port: 7000\n"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- just\n- a list\n", "must be a mapping"),
        ("rpc-port: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_malformed_file_is_a_config_error(tmp_path, text, problem):
    with pytest.raises(ConfigError, match=problem):
        resolve({}, {}, write_config(tmp_path, text))


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"node-name: caf\xe9\xff\n")
    with pytest.raises(ConfigError, match=r"latin1\.yml"):
        resolve({}, {}, str(path))


def test_a_missing_or_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yml"):
        resolve({}, {}, str(tmp_path / "nope.yml"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve({}, {}, str(tmp_path))  # a directory
    with pytest.raises(ConfigError, match=r"cannot read config file .*gone\.yml"):
        resolve({}, {"DKRON_CONFIG": str(tmp_path / "gone.yml")})


@pytest.mark.parametrize(
    ("source", "option", "value"),
    [
        ("flag", "rpc-port", "abc"),
        ("flag", "rpc-port", "70000"),
        ("flag", "raft-port", "0"),
        ("env", "retention-count", "many"),
        ("env", "retention-count", "0"),
        ("file", "retention-count", "2.7"),
        ("file", "max-concurrent-runs", "true"),
        ("flag", "log-json", "maybe"),
        ("env", "ui", "2"),
        ("flag", "catchup-window", "soon"),
        ("flag", "catchup-window", "-10"),
        ("env", "shutdown-timeout", "nan"),
        ("env", "shutdown-timeout", "inf"),
        ("file", "shutdown-timeout", "-3"),
        ("file", "shutdown-timeout", "true"),
        ("file", "catchup-window", "[1, 2]"),
        ("flag", "tag", ["novalue"]),
        ("env", "tag", "=x"),
        ("file", "join", "5"),
        ("file", "node-name", "[a, b]"),
        ("flag", "log-level", "loud"),
        ("flag", "http-addr", "8080"),
        ("flag", "http-addr", "127.0.0.1:99999"),
        ("flag", "retention-age", "a while"),
        ("flag", "bootstrap-expect", "-1"),
    ],
)
def test_bad_values_name_the_option(tmp_path, source, option, value):
    flags, env, path = {}, {}, None
    if source == "flag":
        flags[option] = value
    elif source == "env":
        env[env_name(option)] = value
    else:
        path = write_config(tmp_path, f"{option}: {value}\n")
    with pytest.raises(ConfigError) as err:
        resolve(flags, env, path)
    assert str(err.value).startswith(option), str(err.value)


def test_a_value_that_does_not_parse_says_where_it_came_from(tmp_path):
    with pytest.raises(ConfigError, match=r"^rpc-port \(from DKRON_RPC_PORT\): expected int, got 'x'"):
        resolve({}, {"DKRON_RPC_PORT": "x"})
    with pytest.raises(ConfigError, match=r"^rpc-port \(from flag\)"):
        resolve({"rpc-port": "x"}, {})
    path = write_config(tmp_path, "rpc-port: x\n")
    with pytest.raises(ConfigError, match=r"^rpc-port \(from .*config.yml\)"):
        resolve({}, {}, path)


def test_non_loopback_bind_needs_encrypt_or_insecure_bind():
    with pytest.raises(ConfigError) as err:
        resolve({"bind-addr": "0.0.0.0"}, {})
    assert "bind-addr" in str(err.value) and "--encrypt" in str(err.value) and "--insecure-bind" in str(err.value)
    with pytest.raises(ConfigError):
        resolve({}, {"DKRON_BIND_ADDR": "10.1.2.3"})
    with pytest.raises(ConfigError):
        resolve({"bind-addr": "node7.example"}, {})  # a name is not known to be loopback
    assert resolve({"bind-addr": "0.0.0.0", "insecure-bind": "true"}, {})["bind-addr"] == "0.0.0.0"
    key = base64.b64encode(bytes(range(32))).decode()  # as printed by `dkron keygen`
    assert resolve({"bind-addr": "10.1.2.3"}, {"DKRON_ENCRYPT": key})["encrypt"] == key
    for loopback in ("127.0.0.1", "127.9.9.9", "::1", "localhost"):
        assert resolve({"bind-addr": loopback}, {})["bind-addr"] == loopback


def test_retention_age_is_parsed_into_seconds():
    assert resolve({"retention-age": "720h"}, {})["retention-age-seconds"] == 720 * 3600
    assert resolve({}, {})["retention-age-seconds"] == 0.0


# -- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("2h3m4s", 7384.0),
        ("90", 90.0),
        ("0.25", 0.25),
        ("0", 0.0),
        (" 45s ", 45.0),
    ],
)
def test_parse_duration_accepts(text, seconds):
    assert math.isclose(parse_duration(text), seconds)


@pytest.mark.parametrize("text", ["", "  ", "5x", "1m30", "s", "-1s", "-5", "nan", "inf", "1 h", "h1", "1.2.3s", "1d"])
def test_parse_duration_rejects_naming_the_option(text):
    with pytest.raises(ConfigError) as err:
        parse_duration(text, "shutdown-timeout")
    assert str(err.value).startswith("shutdown-timeout")


def test_max_output_bytes_is_capped_so_a_record_fits_one_raft_entry():
    with pytest.raises(ConfigError, match="max-output-bytes"):
        resolve({"max-output-bytes": str(9 * 1024 * 1024)}, env={})
    assert resolve({"max-output-bytes": str(8 * 1024 * 1024)}, env={})["max-output-bytes"] == 8 * 1024 * 1024
