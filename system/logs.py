"""Logging set-up: Thespian's logging process gets a ``logging.config`` dict (``logDefs=False`` crashes actor
processes, shared/DESIGN.md), in a human format for the terminal or as JSON lines."""

from __future__ import annotations

import json
import logging
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, actor (the logger: actors log as ``aeyon.<ActorClass>``),
    pid, message, and request_id / service when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "actor": record.name.removeprefix("aeyon."),
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key in ("request_id", "service"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def log_defs(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """The logging configuration for the actor system and this process."""
    formatter: dict[str, Any] = (
        {"()": "system.logs.JsonFormatter"} if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        # The level sits on the handler too: Thespian's logging process hands records straight to handlers,
        # skipping the logger-level check.
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr",
                                "level": level}},
        "root": {"handlers": ["stderr"], "level": level},
        # Thespian's own INFO lines are about its internals; operators need its warnings only.
        "loggers": {"Thespian": {"level": "WARNING"}},
    }


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Apply the same configuration to this process (the ``aeyon`` command)."""
    import logging.config

    logging.config.dictConfig(log_defs(level, fmt))


def level_inherited_loggers(inherited: logging.Logger, root: logging.Logger) -> None:
    """Give the loggers this process inherited the level of its logging configuration.

    Modules imported in Thespian's admin process (urllib3 among them, when the admin loads the actor classes)
    keep loggers that hang from the root the admin installed, and that root forwards every level: urllib3's
    debug line for each HTTP call would travel, pickled, to the logging process (measured: a message per guard
    call, about a fifth of a core at 700 requests/s). Those loggers share that one stale root: give it the level
    of this process's ``root``. ``inherited`` is one of them.
    """
    stale = inherited
    while stale.parent is not None:
        stale = stale.parent
    if stale is not root and stale.level < root.level:
        stale.setLevel(root.level)
