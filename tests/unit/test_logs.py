"""The log formats: JSON lines with the fields operators filter on, and the logging configuration."""

from __future__ import annotations

import json
import logging

from system.logs import JsonFormatter, level_inherited_loggers, log_defs


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("aeyon.GuardSupervisor", logging.WARNING, __file__, 1, "a worker died holding %d",
                               (3,), None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_time_level_actor_pid_message_and_request_id() -> None:
    line = json.loads(JsonFormatter().format(_record(request_id="req-9", service="tokenguard")))
    assert line["level"] == "WARNING"
    assert line["actor"] == "GuardSupervisor"
    assert line["message"] == "a worker died holding 3"
    assert (line["request_id"], line["service"]) == ("req-9", "tokenguard")
    assert isinstance(line["pid"], int)
    assert line["ts"].endswith("Z") and "T" in line["ts"]


def test_json_lines_leave_out_what_the_record_does_not_have() -> None:
    line = json.loads(JsonFormatter().format(_record()))
    assert "request_id" not in line and "service" not in line


def test_the_level_is_enforced_on_the_handler_too() -> None:
    # Thespian's logging process hands records straight to handlers, skipping loggers' levels.
    defs = log_defs("WARNING", "json")
    assert defs["handlers"]["stderr"]["level"] == "WARNING"
    assert defs["formatters"]["main"] == {"()": "system.logs.JsonFormatter"}


# -- loggers an actor process inherits from Thespian's admin ---------------------------------------------------


def _stale_tree() -> tuple[logging.Logger, logging.Logger]:
    """A library logger under a root that forwards every level (as Thespian's admin installs it)."""
    stale_root = logging.Logger("root", logging.NOTSET)
    library = logging.Logger("urllib3.connectionpool")
    middle = logging.Logger("urllib3")
    library.parent, middle.parent = middle, stale_root
    return library, stale_root


def test_inherited_loggers_get_the_level_of_the_process_configuration():
    library, stale_root = _stale_tree()
    assert library.isEnabledFor(logging.DEBUG)
    level_inherited_loggers(library, logging.Logger("root", logging.WARNING))
    assert stale_root.level == logging.WARNING
    assert not library.isEnabledFor(logging.INFO)
    assert library.isEnabledFor(logging.WARNING)


def test_a_stricter_inherited_level_is_kept():
    library, stale_root = _stale_tree()
    stale_root.setLevel(logging.ERROR)
    level_inherited_loggers(library, logging.Logger("root", logging.INFO))
    assert stale_root.level == logging.ERROR


def test_loggers_under_the_process_root_are_left_alone():
    root = logging.Logger("root", logging.WARNING)
    library = logging.Logger("urllib3")
    library.parent = root
    level_inherited_loggers(library, root)
    assert root.level == logging.WARNING
    assert library.level == logging.NOTSET
