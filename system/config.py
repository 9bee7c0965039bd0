"""Settings read once from the environment (the contract's variable names) and refused whole when wrong."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs

from system.breaker import BreakerConfig
from system.errors import ConfigError
from system.routing import SERVICE_NAME, SERVICE_TYPES

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@attrs.frozen
class Settings:
    """Everything the orchestrator is configured with; build it with ``Settings.from_env()``."""

    guard_urls: dict[str, str] = attrs.field(factory=dict)
    disable_health_checks: bool = False
    guardian_zero_url: str | None = None
    guardian_zero_enabled: bool = False
    allowed_ips: tuple[Network, ...] = ()
    secret_key: str | None = None
    max_requests_per_minute: int = 100
    host: str = "127.0.0.1"
    port: int = 8000
    admin_port: int = 1900
    # Multi-node (README.rst, "Multi-node"): where this node's actor sockets listen, how often members check in,
    # and, on a member (``aeyon serve --join``), the leader's admin, this member's name and the guards it may host.
    node_address: str = "127.0.0.1"
    heartbeat_s: int = 1
    join: tuple[str, int] | None = None
    member_name: str = ""
    member_guards: str = "*"
    admin_token: str | None = None
    trusted_proxies: tuple[Network, ...] = ()
    workers_per_guard: int = 10
    max_in_flight: int = 100
    max_in_flight_per_guard: int = 75
    queue_per_guard: int = 100
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    retry_attempts: int = 3
    retry_budget_percent: float = 20.0
    retry_min_concurrency: int = 3
    restart_max: int = 5
    restart_period_s: float = 10.0
    fail_open: frozenset[str] = frozenset()
    allow_unchecked: frozenset[str] = frozenset()
    health_interval_s: float = 30.0
    health_timeout_s: float = 5.0
    shims: int = 1
    drain_grace_s: float = 5.0
    drain_timeout_s: float = 30.0
    events_queue: int = 1000
    events_ack_timeout_s: float = 30.0
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_idle_timeout_s: float = 60.0
    http_max_connections: int = 10_000
    log_format: str = "text"
    log_level: str = "INFO"
    embedded: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read the settings from ``environ``; raise ``ConfigError`` naming the first bad variable."""
        return _read(_Env(environ))


    @staticmethod
    def variables() -> tuple[str, ...]:
        """Every environment variable the settings are read from."""
        env = _Env({})
        _read(env)
        return tuple(env.names)

    def with_guard_urls(self, urls: Mapping[str, str], *, embedded: bool) -> Settings:
        """A copy routing to ``urls`` (used when ``aeyon serve`` starts the reference guards)."""
        return attrs.evolve(self, guard_urls=dict(urls), embedded=embedded)


def _read(env: _Env) -> Settings:
    guard_urls = {}
    for service_type, info in SERVICE_TYPES.items():
        url = env.get(info.env_var, _guard_url, None)
        if url:
            guard_urls[service_type] = url
    return Settings(
        guard_urls=guard_urls,
        disable_health_checks=env.get("DISABLE_HEALTH_CHECKS", _boolean, False),
        guardian_zero_url=env.get("GUARDIAN_ZERO_URL", _guard_url, None),
        guardian_zero_enabled=env.get("GUARDIAN_ZERO_ENABLED", _boolean, False),
        allowed_ips=env.get("SECURITY_ALLOWED_IPS", _networks, ()),
        secret_key=env.get("SECURITY_SECRET_KEY", _secret, None),
        max_requests_per_minute=env.get("SECURITY_MAX_REQUESTS_PER_MINUTE", _int_range(1, 10_000_000), 100),
        host=env.get("AEYON_HOST", _host, "127.0.0.1"),
        port=env.get("AEYON_PORT", _int_range(0, 65535), 8000),
        admin_port=env.get("AEYON_ADMIN_PORT", _int_range(1, 65535), 1900),
        node_address=env.get("AEYON_NODE_ADDRESS", _node_address, "127.0.0.1"),
        heartbeat_s=env.get("AEYON_HEARTBEAT", _int_range(1, 600), 1),
        join=env.get("AEYON_JOIN", _host_port, None),
        member_name=env.get("AEYON_MEMBER_NAME", _member_name, ""),
        member_guards=env.get("AEYON_MEMBER_GUARDS", _member_guards, "*"),
        admin_token=env.get("AEYON_ADMIN_TOKEN", _secret, None),
        trusted_proxies=env.get("AEYON_TRUSTED_PROXIES", _networks, ()),
        workers_per_guard=env.get("AEYON_WORKERS_PER_GUARD", _int_range(1, 256), 10),
        max_in_flight=env.get("AEYON_MAX_IN_FLIGHT", _int_range(1, 100_000), 100),
        max_in_flight_per_guard=env.get("AEYON_MAX_IN_FLIGHT_PER_GUARD", _int_range(1, 100_000), 75),
        queue_per_guard=env.get("AEYON_QUEUE_PER_GUARD", _int_range(1, 100_000), 100),
        breaker=_breaker(env),
        retry_attempts=env.get("AEYON_RETRY_ATTEMPTS", _int_range(1, 10), 3),
        retry_budget_percent=env.get("AEYON_RETRY_BUDGET_PERCENT", _number(0, 100), 20.0),
        retry_min_concurrency=env.get("AEYON_RETRY_MIN_CONCURRENCY", _int_range(0, 10_000), 3),
        restart_max=env.get("AEYON_RESTART_MAX", _int_range(0, 1000), 5),
        restart_period_s=env.get("AEYON_RESTART_PERIOD", _seconds(0.1, 3600), 10.0),
        fail_open=env.get("AEYON_FAIL_OPEN", _names, frozenset()),
        allow_unchecked=env.get("AEYON_ALLOW_UNCHECKED", _names, frozenset()),
        health_interval_s=env.get("AEYON_HEALTH_INTERVAL", _seconds(0.05, 86_400), 30.0),
        health_timeout_s=env.get("AEYON_HEALTH_TIMEOUT", _seconds(0.05, 300), 5.0),
        shims=env.get("AEYON_SHIMS", _int_range(1, 64), 1),
        drain_grace_s=env.get("AEYON_DRAIN_GRACE", _seconds(0, 3600), 5.0),
        drain_timeout_s=env.get("AEYON_DRAIN_TIMEOUT", _seconds(0, 3600), 30.0),
        events_queue=env.get("AEYON_EVENTS_QUEUE", _int_range(1, 1_000_000), 1000),
        events_ack_timeout_s=env.get("AEYON_EVENTS_ACK_TIMEOUT", _seconds(0.1, 3600), 30.0),
        http_header_timeout_s=env.get("AEYON_HTTP_HEADER_TIMEOUT", _seconds(0.1, 3600), 10.0),
        http_body_timeout_s=env.get("AEYON_HTTP_BODY_TIMEOUT", _seconds(0.1, 3600), 60.0),
        http_idle_timeout_s=env.get("AEYON_HTTP_IDLE_TIMEOUT", _seconds(0.1, 86_400), 60.0),
        http_max_connections=env.get("AEYON_HTTP_MAX_CONNECTIONS", _int_range(1, 1_000_000), 10_000),
        log_format=env.get("AEYON_LOG_FORMAT", _choice("text", "json"), "text"),
        log_level=env.get("AEYON_LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    )


class _Env:
    """Reads one variable at a time and names it in the error when its value is wrong."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ
        self.names: list[str] = []

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        self.names.append(name)
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc} (got {_masked(raw)!r})") from None


def _masked(raw: str) -> str:
    """The value for an error message, without a password a URL may carry."""
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        return raw
    if "@" not in parts.netloc:
        return raw
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _breaker(env: _Env) -> BreakerConfig:
    default = BreakerConfig()
    values: dict[str, Any] = {
        "window_size": env.get("AEYON_BREAKER_WINDOW", _int_range(1, 100_000), default.window_size),
        "minimum_calls": env.get("AEYON_BREAKER_MIN_CALLS", _int_range(1, 100_000), default.minimum_calls),
        "failure_rate_threshold": env.get("AEYON_BREAKER_FAILURE_RATE", _number(1, 100),
                                          default.failure_rate_threshold * 100) / 100,
        "slow_call_duration_s": env.get("AEYON_BREAKER_SLOW_CALL", _seconds(0.001, 300),
                                        default.slow_call_duration_s),
        "slow_call_rate_threshold": env.get("AEYON_BREAKER_SLOW_RATE", _number(1, 100),
                                            default.slow_call_rate_threshold * 100) / 100,
        "open_base_s": env.get("AEYON_BREAKER_OPEN", _seconds(0.01, 3600), default.open_base_s),
        "open_max_s": env.get("AEYON_BREAKER_OPEN_MAX", _seconds(0.01, 86_400), default.open_max_s),
        "half_open_calls": env.get("AEYON_BREAKER_HALF_OPEN_CALLS", _int_range(1, 1000), default.half_open_calls),
    }
    try:
        return BreakerConfig(**values)
    except ValueError as exc:
        raise ConfigError(f"AEYON_BREAKER_*: {exc}") from None


def _number(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number from {low:g} to {high:g}") from None
        if not low <= value <= high:
            raise ValueError(f"must be a number from {low:g} to {high:g}")
        return value

    return parse


def _names(raw: str) -> frozenset[str]:
    names = frozenset(part.strip() for part in raw.split(",") if part.strip())
    bad = sorted(n for n in names if not SERVICE_NAME.fullmatch(n))
    if bad:
        raise ValueError(f"{bad[0]!r} is not a service name")
    return names


def _boolean(raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("must be true or false")


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number of seconds from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be a number of seconds from {low} to {high}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for choice in choices:
            if raw.lower() == choice.lower():
                return choice
        raise ValueError("must be one of " + ", ".join(choices))

    return parse


def _networks(raw: str) -> tuple[Network, ...]:
    networks = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not a CIDR such as 10.0.0.0/8 or ::1/128") from None
    return tuple(networks)


def _guard_url(raw: str) -> str:
    check_guard_url(raw)
    return raw.rstrip("/")


def check_guard_url(url: str) -> None:
    """Refuse a guard URL that is not plain http(s) with a host, or that carries credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("has an invalid port") from None


def _host(raw: str) -> str:
    if raw == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError("must be an IP address to listen on, such as 127.0.0.1 or 0.0.0.0") from None


def _node_address(raw: str) -> str:
    address = _host(raw)
    if address in ("0.0.0.0", "::"):
        raise ValueError("must be one address of this host that the other nodes reach, not every interface")
    if ":" in address:
        raise ValueError("must be an IPv4 address (Thespian's conventions speak IPv4)")
    return address


def _host_port(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ValueError("must be HOST:PORT, the leader's address and admin port, such as 10.0.0.5:1900")
    return _node_address(host), _int_range(1, 65535)(port)


def _member_name(raw: str) -> str:
    if raw == "leader" or not SERVICE_NAME.fullmatch(raw):
        raise ValueError("must be a name of letters, digits, '-' and '_' (not 'leader')")
    return raw


def _member_guards(raw: str) -> str:
    if raw.strip() == "*":
        return "*"
    return ",".join(sorted(_names(raw)))


def _secret(raw: str) -> str:
    # Any non-empty value is accepted: refusing short keys at start would break deployments that work today.
    # README.rst recommends 32 random bytes.
    return raw


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as a JSON-ready dict with secrets masked (for logs and inspection)."""
    out = attrs.asdict(settings, recurse=False)
    for key in ("secret_key", "admin_token"):
        if out[key]:
            out[key] = "***"
    out["allowed_ips"] = [str(n) for n in settings.allowed_ips]
    out["trusted_proxies"] = [str(n) for n in settings.trusted_proxies]
    out["breaker"] = attrs.asdict(settings.breaker)
    out["fail_open"] = sorted(settings.fail_open)
    out["allow_unchecked"] = sorted(settings.allow_unchecked)
    return out
