"""Settings.from_env: the contract's variables, their defaults, and refusals that name the variable."""

from __future__ import annotations

import ipaddress
import json

import pytest

from system.config import Settings, check_guard_url, describe
from system.errors import ConfigError
from system.reload import reconfigured
from system.routing import SERVICE_TYPES

GUARD_VARS = [(t.name, t.env_var) for t in SERVICE_TYPES.values()]


def test_empty_environment_gives_the_contract_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.guard_urls == {}
    assert settings.disable_health_checks is False
    assert settings.guardian_zero_url is None
    assert settings.guardian_zero_enabled is False
    assert settings.allowed_ips == ()
    assert settings.secret_key is None
    assert settings.max_requests_per_minute == 100
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.admin_port == 1900
    assert settings.admin_token is None
    assert settings.trusted_proxies == ()
    assert settings.max_in_flight == 100
    assert settings.embedded is False


def test_blank_values_count_as_unset():
    settings = Settings.from_env({"AEYON_PORT": "   ", "TOKENGUARD_URL": "", "DISABLE_HEALTH_CHECKS": " "})
    assert settings.port == 8000
    assert settings.guard_urls == {}
    assert settings.disable_health_checks is False


def test_unrelated_variables_are_ignored():
    assert Settings.from_env({"PATH": "/usr/bin", "HOME": "/root"}) == Settings()


@pytest.mark.parametrize(("service_type", "env_var"), GUARD_VARS)
def test_each_guard_url_variable_routes_its_type(service_type, env_var):
    settings = Settings.from_env({env_var: "http://10.1.2.3:9000"})
    assert settings.guard_urls == {service_type: "http://10.1.2.3:9000"}


def test_all_six_guard_urls_are_read_together():
    env = {var: f"http://guard-{name}.internal:8080" for name, var in GUARD_VARS}
    settings = Settings.from_env(env)
    assert settings.guard_urls == {name: f"http://guard-{name}.internal:8080" for name, _ in GUARD_VARS}


def test_guard_url_trailing_slashes_are_dropped_and_https_is_accepted():
    settings = Settings.from_env({"TOKENGUARD_URL": "https://guard.example:8443/base//"})
    assert settings.guard_urls == {"tokenguard": "https://guard.example:8443/base"}


def test_guard_url_with_ipv6_host_is_accepted():
    settings = Settings.from_env({"TRUSTGUARD_URL": "http://[::1]:8002"})
    assert settings.guard_urls == {"trustguard": "http://[::1]:8002"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("TRUE", True), ("False", False),
     ("yes", True), ("no", False), ("on", True), ("off", False), ("  true  ", True)],
)
def test_booleans_are_parsed(raw, expected):
    settings = Settings.from_env({"DISABLE_HEALTH_CHECKS": raw, "GUARDIAN_ZERO_ENABLED": raw})
    assert settings.disable_health_checks is expected
    assert settings.guardian_zero_enabled is expected


def test_guardian_zero_url_is_read():
    settings = Settings.from_env({"GUARDIAN_ZERO_URL": "http://127.0.0.1:7000/", "GUARDIAN_ZERO_ENABLED": "true"})
    assert settings.guardian_zero_url == "http://127.0.0.1:7000"
    assert settings.guardian_zero_enabled is True


@pytest.mark.parametrize("var", ["SECURITY_ALLOWED_IPS", "AEYON_TRUSTED_PROXIES"])
def test_cidr_lists_take_ipv4_and_ipv6_and_bare_addresses(var):
    settings = Settings.from_env({var: "10.0.0.0/8, ::1/128,192.168.1.5 ,2001:db8::/32,"})
    attr = "allowed_ips" if var == "SECURITY_ALLOWED_IPS" else "trusted_proxies"
    assert getattr(settings, attr) == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.5/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_cidr_with_host_bits_set_is_normalised_not_refused():
    settings = Settings.from_env({"SECURITY_ALLOWED_IPS": "10.1.2.3/8"})
    assert settings.allowed_ips == (ipaddress.ip_network("10.0.0.0/8"),)


def test_secrets_are_taken_verbatim():
    settings = Settings.from_env({"SECURITY_SECRET_KEY": "s3cr3t", "AEYON_ADMIN_TOKEN": "tok"})
    assert settings.secret_key == "s3cr3t"
    assert settings.admin_token == "tok"


@pytest.mark.parametrize(
    ("var", "attr", "raw", "expected"),
    [
        ("SECURITY_MAX_REQUESTS_PER_MINUTE", "max_requests_per_minute", "1", 1),
        ("SECURITY_MAX_REQUESTS_PER_MINUTE", "max_requests_per_minute", "10000000", 10_000_000),
        ("AEYON_PORT", "port", "0", 0),
        ("AEYON_PORT", "port", "65535", 65535),
        ("AEYON_PORT", "port", " 8080 ", 8080),
        ("AEYON_ADMIN_PORT", "admin_port", "1", 1),
        ("AEYON_ADMIN_PORT", "admin_port", "65535", 65535),
        ("AEYON_WORKERS_PER_GUARD", "workers_per_guard", "256", 256),
        ("AEYON_MAX_IN_FLIGHT", "max_in_flight", "100000", 100_000),
        ("AEYON_QUEUE_PER_GUARD", "queue_per_guard", "1", 1),
        ("AEYON_SHIMS", "shims", "64", 64),
        ("AEYON_HEALTH_INTERVAL", "health_interval_s", "0.05", 0.05),
        ("AEYON_HEALTH_INTERVAL", "health_interval_s", "86400", 86_400.0),
        ("AEYON_HEALTH_TIMEOUT", "health_timeout_s", "2.5", 2.5),
        ("AEYON_LOG_FORMAT", "log_format", "JSON", "json"),
        ("AEYON_LOG_LEVEL", "log_level", "debug", "DEBUG"),
    ],
)
def test_numbers_and_choices_are_parsed_at_their_range_ends(var, attr, raw, expected):
    assert getattr(Settings.from_env({var: raw}), attr) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("localhost", "127.0.0.1"), ("0.0.0.0", "0.0.0.0"), ("::", "::"), ("::1", "::1"), ("10.0.0.7", "10.0.0.7"),
     ("0:0:0:0:0:0:0:1", "::1")],
)
def test_aeyon_host_takes_ip_addresses_and_localhost(raw, expected):
    assert Settings.from_env({"AEYON_HOST": raw}).host == expected



def test_multi_node_settings_default_to_a_single_node():
    settings = Settings.from_env({})
    assert settings.node_address == "127.0.0.1"
    assert settings.heartbeat_s == 1
    assert settings.join is None
    assert settings.member_name == ""
    assert settings.member_guards == "*"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("127.0.0.1:1900", ("127.0.0.1", 1900)), ("10.0.0.5:1", ("10.0.0.5", 1)),
     (" 10.0.0.5:65535 ", ("10.0.0.5", 65535)), ("localhost:1900", ("127.0.0.1", 1900))],
)
def test_aeyon_join_is_the_leaders_ipv4_address_and_admin_port(raw, expected):
    assert Settings.from_env({"AEYON_JOIN": raw}).join == expected


@pytest.mark.parametrize(("raw", "expected"), [("10.0.0.7", "10.0.0.7"), ("localhost", "127.0.0.1")])
def test_aeyon_node_address_takes_one_ipv4_address(raw, expected):
    assert Settings.from_env({"AEYON_NODE_ADDRESS": raw}).node_address == expected


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("600", 600), (" 30 ", 30)])
def test_aeyon_heartbeat_is_whole_seconds_from_1_to_600(raw, expected):
    assert Settings.from_env({"AEYON_HEARTBEAT": raw}).heartbeat_s == expected


@pytest.mark.parametrize("raw", ["node-1", "gpu_box", "m", "leader2", "n" * 64])
def test_aeyon_member_name_takes_service_like_names(raw):
    assert Settings.from_env({"AEYON_MEMBER_NAME": raw}).member_name == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("*", "*"), (" * ", "*"), ("trustguard, tokenguard", "tokenguard,trustguard"),
     ("tokenguard,tokenguard,", "tokenguard"), ("biasguard", "biasguard")],
)
def test_aeyon_member_guards_is_any_or_a_sorted_list_of_names(raw, expected):
    assert Settings.from_env({"AEYON_MEMBER_GUARDS": raw}).member_guards == expected


def test_aeyon_join_refusal_says_what_is_expected():
    with pytest.raises(ConfigError, match=r"^AEYON_JOIN: must be HOST:PORT"):
        Settings.from_env({"AEYON_JOIN": "1900"})
    with pytest.raises(ConfigError, match=r"^AEYON_JOIN: .*IPv4"):
        Settings.from_env({"AEYON_JOIN": "::1:1900"})
    with pytest.raises(ConfigError, match=r"^AEYON_JOIN: .*not every interface"):
        Settings.from_env({"AEYON_JOIN": "0.0.0.0:1900"})


@pytest.mark.parametrize(
    ("var", "value"),
    [("AEYON_JOIN", "10.0.0.9:1900"), ("AEYON_NODE_ADDRESS", "10.0.0.9"), ("AEYON_HEARTBEAT", "5"),
     ("AEYON_MEMBER_NAME", "node-2"), ("AEYON_MEMBER_GUARDS", "tokenguard")],
)
def test_multi_node_settings_cannot_change_while_running(var, value):
    start = {"AEYON_JOIN": "10.0.0.5:1900", "AEYON_NODE_ADDRESS": "10.0.0.6", "AEYON_MEMBER_NAME": "node-1"}
    current = Settings.from_env(start)
    with pytest.raises(ConfigError, match=rf"^{var}: cannot change while running"):
        reconfigured(start, {}, {var: value}, current)
    # The value it started with (or, for one it started without, unset again) is accepted.
    same, _ = reconfigured(start, {}, {var: start.get(var, "")}, current)
    assert same == current


def test_joining_or_leaving_a_convention_cannot_happen_while_running():
    member = {"AEYON_JOIN": "10.0.0.5:1900", "AEYON_NODE_ADDRESS": "10.0.0.6"}
    with pytest.raises(ConfigError, match=r"^AEYON_JOIN: cannot change while running"):
        reconfigured(member, {}, {"AEYON_JOIN": ""}, Settings.from_env(member))  # a member would leave
    with pytest.raises(ConfigError, match=r"^AEYON_JOIN: cannot change while running"):
        reconfigured({}, {}, {"AEYON_JOIN": "10.0.0.5:1900"}, Settings())  # a lone node would join

BAD_VALUES = [
    *[(var, "ftp://guard:21") for _, var in GUARD_VARS],
    *[(var, "http://") for _, var in GUARD_VARS],
    ("TOKENGUARD_URL", "guard.example:8001"),
    ("TOKENGUARD_URL", "http://user:pw@guard:8001"),
    ("TOKENGUARD_URL", "http://user@guard:8001"),
    ("TOKENGUARD_URL", "http://guard:99999"),
    ("TOKENGUARD_URL", "http://guard:port"),
    ("TOKENGUARD_URL", "http://guard/?x=1"),
    ("TOKENGUARD_URL", "http://guard/#frag"),
    ("TOKENGUARD_URL", "http://[::1"),
    ("GUARDIAN_ZERO_URL", "file:///etc/passwd"),
    ("GUARDIAN_ZERO_URL", "http://a:b@gz"),
    ("DISABLE_HEALTH_CHECKS", "maybe"),
    ("DISABLE_HEALTH_CHECKS", "2"),
    ("GUARDIAN_ZERO_ENABLED", "enabled"),
    ("SECURITY_ALLOWED_IPS", "10.0.0.0/33"),
    ("SECURITY_ALLOWED_IPS", "10.0.0.0/8,not-an-ip"),
    ("SECURITY_ALLOWED_IPS", "::1/129"),
    ("AEYON_TRUSTED_PROXIES", "proxy.internal"),
    ("SECURITY_MAX_REQUESTS_PER_MINUTE", "0"),
    ("SECURITY_MAX_REQUESTS_PER_MINUTE", "-5"),
    ("SECURITY_MAX_REQUESTS_PER_MINUTE", "1.5"),
    ("SECURITY_MAX_REQUESTS_PER_MINUTE", "many"),
    ("SECURITY_MAX_REQUESTS_PER_MINUTE", "10000001"),
    ("AEYON_HOST", "example.com"),
    ("AEYON_HOST", "256.1.1.1"),
    ("AEYON_HOST", "127.0.0.1:8000"),
    ("AEYON_PORT", "65536"),
    ("AEYON_PORT", "-1"),
    ("AEYON_PORT", "http"),
    ("AEYON_ADMIN_PORT", "0"),
    ("AEYON_ADMIN_PORT", "70000"),
    ("AEYON_WORKERS_PER_GUARD", "0"),
    ("AEYON_WORKERS_PER_GUARD", "257"),
    ("AEYON_MAX_IN_FLIGHT", "0"),
    ("AEYON_QUEUE_PER_GUARD", "100001"),
    ("AEYON_HEALTH_INTERVAL", "0.01"),
    ("AEYON_HEALTH_INTERVAL", "nan"),
    ("AEYON_HEALTH_INTERVAL", "inf"),
    ("AEYON_HEALTH_TIMEOUT", "301"),
    ("AEYON_HEALTH_TIMEOUT", "soon"),
    ("AEYON_SHIMS", "65"),
    ("AEYON_LOG_FORMAT", "xml"),
    ("AEYON_LOG_LEVEL", "TRACE"),
    ("AEYON_JOIN", "1900"),
    ("AEYON_JOIN", ":1900"),
    ("AEYON_JOIN", "127.0.0.1:"),
    ("AEYON_JOIN", "127.0.0.1:0"),
    ("AEYON_JOIN", "127.0.0.1:99999"),
    ("AEYON_JOIN", "127.0.0.1:port"),
    ("AEYON_JOIN", "host:99999"),
    ("AEYON_JOIN", "leader.internal:1900"),
    ("AEYON_JOIN", "0.0.0.0:1900"),
    ("AEYON_JOIN", "::1:1900"),
    ("AEYON_JOIN", "[::1]:1900"),
    ("AEYON_NODE_ADDRESS", "0.0.0.0"),
    ("AEYON_NODE_ADDRESS", "::"),
    ("AEYON_NODE_ADDRESS", "::1"),
    ("AEYON_NODE_ADDRESS", "2001:db8::5"),
    ("AEYON_NODE_ADDRESS", "node.internal"),
    ("AEYON_NODE_ADDRESS", "10.0.0.5:1900"),
    ("AEYON_HEARTBEAT", "0"),
    ("AEYON_HEARTBEAT", "601"),
    ("AEYON_HEARTBEAT", "1.5"),
    ("AEYON_HEARTBEAT", "often"),
    ("AEYON_MEMBER_NAME", "leader"),
    ("AEYON_MEMBER_NAME", "Node1"),
    ("AEYON_MEMBER_NAME", "-node"),
    ("AEYON_MEMBER_NAME", "node 1"),
    ("AEYON_MEMBER_NAME", "node.1"),
    ("AEYON_MEMBER_NAME", "n" * 65),
    ("AEYON_MEMBER_GUARDS", "TokenGuard"),
    ("AEYON_MEMBER_GUARDS", "tokenguard, bad name"),
    ("AEYON_MEMBER_GUARDS", "tokenguard,*"),
]


@pytest.mark.parametrize(("var", "raw"), BAD_VALUES)
def test_a_bad_value_raises_config_error_naming_the_variable(var, raw):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    assert str(info.value).startswith(var + ":"), str(info.value)


def test_the_first_bad_variable_is_named_even_when_others_are_fine():
    with pytest.raises(ConfigError, match=r"^AEYON_ADMIN_PORT:"):
        Settings.from_env({"AEYON_PORT": "8080", "AEYON_ADMIN_PORT": "0", "AEYON_HOST": "localhost"})


def test_url_refusals_say_why():
    with pytest.raises(ValueError, match="credentials"):
        check_guard_url("http://user:pw@guard")
    with pytest.raises(ValueError, match="http:// or https://"):
        check_guard_url("ftp://guard")
    with pytest.raises(ValueError, match="host"):
        check_guard_url("http:///scan")
    check_guard_url("http://guard:8001/base")


def test_refusing_a_url_with_credentials_does_not_echo_the_password():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TOKENGUARD_URL": "http://admin:hunter2@guard:8001"})
    assert "hunter2" not in str(info.value)


def test_describe_masks_secrets_and_is_json_ready():
    settings = Settings.from_env({
        "SECURITY_SECRET_KEY": "top-secret-key",
        "AEYON_ADMIN_TOKEN": "admin-token-value",
        "SECURITY_ALLOWED_IPS": "10.0.0.0/8,::1",
        "AEYON_TRUSTED_PROXIES": "192.168.0.0/16",
        "TOKENGUARD_URL": "http://127.0.0.1:8001",
    })
    out = describe(settings)
    assert out["secret_key"] == "***"
    assert out["admin_token"] == "***"
    assert out["allowed_ips"] == ["10.0.0.0/8", "::1/128"]
    assert out["trusted_proxies"] == ["192.168.0.0/16"]
    assert out["guard_urls"] == {"tokenguard": "http://127.0.0.1:8001"}
    text = json.dumps(out)
    assert "top-secret-key" not in text
    assert "admin-token-value" not in text


def test_describe_leaves_unset_secrets_as_none():
    out = describe(Settings())
    assert out["secret_key"] is None
    assert out["admin_token"] is None


def test_with_guard_urls_marks_embedded_and_copies():
    urls = {"tokenguard": "http://127.0.0.1:1"}
    settings = Settings().with_guard_urls(urls, embedded=True)
    urls["biasguard"] = "http://127.0.0.1:2"
    assert settings.guard_urls == {"tokenguard": "http://127.0.0.1:1"}
    assert settings.embedded is True
