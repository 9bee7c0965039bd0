"""Hot reload: new values for some settings, checked whole against the environment the orchestrator started with.

Sources: ``POST /v1/config`` (a JSON object of the contract's variable names and values) and, on SIGHUP, the file
named by ``AEYON_CONFIG_FILE`` (``NAME=value`` lines). Values accumulate: each reload is applied on top of the
earlier ones; an empty value returns a variable to its start-up value. A change is refused whole, with the
reason, when any value is wrong or when it would change what only a restart can (where the orchestrator listens,
how many shims it runs); the running settings then stay as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from system.config import Settings
from system.errors import ConfigError

# Settings fixed for the life of the process: changing them needs a restart.
FIXED = {"host": "AEYON_HOST", "port": "AEYON_PORT", "admin_port": "AEYON_ADMIN_PORT", "shims": "AEYON_SHIMS",
         "node_address": "AEYON_NODE_ADDRESS", "heartbeat_s": "AEYON_HEARTBEAT", "join": "AEYON_JOIN",
         "member_name": "AEYON_MEMBER_NAME", "member_guards": "AEYON_MEMBER_GUARDS"}
ENV_FILE = "AEYON_CONFIG_FILE"


def relevant(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment the settings are read from."""
    names = set(Settings.variables())
    return {name: value for name, value in environ.items() if name in names}


def reconfigured(start_env: Mapping[str, str], applied: Mapping[str, str], changes: Mapping[str, Any],
                 current: Settings) -> tuple[Settings, dict[str, str]]:
    """The settings after ``changes`` (on top of those ``applied`` before) and the new set of applied values;
    raises ``ConfigError`` naming the first wrong variable."""
    known = set(Settings.variables())
    merged = dict(applied)
    for name, value in changes.items():
        if name not in known:
            raise ConfigError(f"{name}: not a setting")
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{name}: must be a string or a number")
        merged[name] = str(value)
    env = dict(start_env)
    for name, value in merged.items():
        if value == "":
            env.pop(name, None)
        else:
            env[name] = value
    settings = Settings.from_env(env)
    for field, name in FIXED.items():
        if getattr(settings, field) != getattr(current, field):
            raise ConfigError(f"{name}: cannot change while running (restart to change it)")
    if current.embedded and not settings.guard_urls:
        # Still no guard configured: keep routing to the reference guards started with the process.
        settings = settings.with_guard_urls(current.guard_urls, embedded=True)
    return settings, {name: value for name, value in merged.items() if value != ""}


def read_env_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines (``#`` comments, blank lines, optional quotes); ``ConfigError`` for a bad line."""
    values = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not sep or not name.replace("_", "").isalnum():
            raise ConfigError(f"{ENV_FILE}: {path}:{number}: expected NAME=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def changed_fields(old: Settings, new: Settings) -> list[str]:
    """The names of the settings that differ (for the answer and the log)."""
    return [field.name for field in attrs.fields(Settings) if getattr(old, field.name) != getattr(new, field.name)]
