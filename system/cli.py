"""The ``aeyon`` command: serve, orchestrate, services, tree, events, stop.

Every subcommand exits non-zero on error with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from system.errors import AeyonError, ConfigError

# A stop drains first (AEYON_DRAIN_TIMEOUT, 30 s by default), then shuts down (at most about 11 s).
STOP_TIMEOUT_S = 90.0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except AeyonError as exc:
        print(f"aeyon: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aeyon", description="Aeyon Orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the orchestrator (configured by environment variables)")
    serve.add_argument("--join", metavar="HOST:PORT",
                       help="run a member that joins the leader whose actor admin is at HOST:PORT, instead of an "
                            "orchestrator (default: $AEYON_JOIN)")
    serve.add_argument("--guards", metavar="NAMES",
                       help="with --join: the guards this member may host, comma-separated, or * for any "
                            "(default: $AEYON_MEMBER_GUARDS or *)")
    serve.add_argument("--name", help="with --join: this member's name (default: $AEYON_MEMBER_NAME or "
                                      "member-ADMIN_PORT)")
    serve.set_defaults(run=_serve)

    orchestrate = sub.add_parser("orchestrate", help="call one guard through the running orchestrator")
    orchestrate.add_argument("service")
    what = orchestrate.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help='send {"text": TEXT}')
    what.add_argument("--payload", help="send this JSON object")
    orchestrate.add_argument("--request-id")
    orchestrate.add_argument("--timeout", type=float, default=30.0)
    _admin_port(orchestrate)
    orchestrate.set_defaults(run=_orchestrate)

    services = sub.add_parser("services", help="list the registered guards and their state")
    services.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _admin_port(services)
    services.set_defaults(run=_services)

    tree = sub.add_parser("tree", help="the live actor tree with each actor's state")
    tree.add_argument("--json", action="store_true", help="print JSON instead of an indented tree")
    _admin_port(tree)
    tree.set_defaults(run=_tree)

    events = sub.add_parser("events", help="the recent events, or (--follow) events as they happen")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing events as they are published")
    events.add_argument("--since", type=int, default=0, help="only events after this sequence number")
    events.add_argument("--type", dest="types", action="append", default=[], metavar="EVENT_TYPE",
                        help="only this event type (repeatable)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    _admin_port(events)
    events.set_defaults(run=_events)

    stop = sub.add_parser("stop", help="stop the running orchestrator and every process it started (after the "
                                       "requests in flight are answered)")
    stop.add_argument("--now", action="store_true", help="do not wait for the requests in flight")
    _admin_port(stop)
    stop.set_defaults(run=_stop)
    return parser


def _admin_port(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("AEYON_ADMIN_PORT", "1900")
    parser.add_argument("--admin-port", type=int, default=int(default) if default.isdigit() else 1900,
                        help="the actor system's admin port (default: $AEYON_ADMIN_PORT or 1900)")


def _serve(args: argparse.Namespace) -> int:
    # Metrics from every actor process go to files in one directory; prometheus_client reads the variable
    # when it is first imported, so it is set before anything imports it (the actors inherit it).
    metrics_dir = tempfile.mkdtemp(prefix="aeyon-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from system.config import Settings
        from system.logs import configure
        from system.reload import ENV_FILE, read_env_file
        from system.serve import serve, serve_member

        environ = dict(os.environ)
        config_file = environ.get(ENV_FILE)
        if config_file:
            try:
                environ.update(read_env_file(config_file))  # the file's values win over the environment's
            except OSError as exc:
                raise ConfigError(f"{ENV_FILE}: cannot read {config_file}: {exc.strerror}") from None
        # The command line wins over the environment and the file.
        for option, variable in (("join", "AEYON_JOIN"), ("guards", "AEYON_MEMBER_GUARDS"),
                                 ("name", "AEYON_MEMBER_NAME")):
            if getattr(args, option, None) is not None:
                environ[variable] = getattr(args, option)
        settings = Settings.from_env(environ)
        configure(settings.log_level, settings.log_format)
        if settings.join is not None:
            return serve_member(settings)
        return serve(settings, environ)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _orchestrate(args: argparse.Namespace) -> int:
    from system.gateway import Gateway

    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise AeyonError(f"--payload is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise AeyonError("--payload must be a JSON object")
    else:
        payload = {"text": args.text}
    with Gateway.connect(admin_port=args.admin_port) as gw:
        result = gw.orchestrate(args.service, payload, request_id=args.request_id, timeout=args.timeout)
    out: dict[str, Any] = {"request_id": result.request_id, "service": result.service, "status": result.status}
    if result.ok:
        out["result"] = result.result
        out["duration_ms"] = round(result.duration_ms, 3)
        print(json.dumps(out, indent=2))
        return 0
    out["error"] = {"code": result.error_code, "message": result.error_message}
    if result.error_detail is not None:
        out["error"]["detail"] = result.error_detail
    print(json.dumps(out, indent=2))
    print(f"aeyon: {result.error_code}: {result.error_message}", file=sys.stderr)
    return 1


def _services(args: argparse.Namespace) -> int:
    from system.gateway import Gateway

    with Gateway.connect(admin_port=args.admin_port) as gw:
        services = gw.services()
    if args.json:
        print(json.dumps({"services": services}, indent=2))
        return 0
    print(format_table(services, ("name", "service_type", "url", "health", "circuit", "in_flight")))
    return 0


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table with a header line."""
    cells = [[str(c).upper() for c in columns]] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _events(args: argparse.Namespace) -> int:
    from actors.messages.events import EVENT_TYPES
    from system.gateway import Gateway

    unknown = sorted(set(args.types) - set(EVENT_TYPES))
    if unknown:
        raise AeyonError("unknown event type: " + ", ".join(unknown))
    with Gateway.connect(admin_port=args.admin_port) as gw:
        stream = (gw.follow(tuple(args.types), since=args.since) if args.follow
                  else iter(gw.events(args.since, tuple(args.types))))
        for event in stream:
            print(format_event(event, as_json=args.json), flush=True)
    return 0


def format_event(event: Any, as_json: bool = False) -> str:
    """One line per event: sequence, UTC time, type, source and data (or the same as JSON)."""
    fields = {"sequence": event.sequence, "timestamp": event.timestamp, "event_type": event.event_type,
              "source": event.source, "data": event.data}
    if as_json:
        return json.dumps(fields)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.timestamp))
    return f"{event.sequence:>6} {when}Z {event.event_type:<30} {event.source:<14} {json.dumps(event.data)}"


def _tree(args: argparse.Namespace) -> int:
    from system.gateway import Gateway

    with Gateway.connect(admin_port=args.admin_port) as gw:
        tree = gw.tree()
    if args.json:
        print(json.dumps(tree, indent=2))
    else:
        print(format_tree(tree))
    return 0


def format_tree(node: dict[str, Any], depth: int = 0) -> str:
    """One line per actor, indented by depth: name, class, pid, and its state (or that it did not answer)."""
    pad = "  " * depth
    if node.get("responsive"):
        state = " ".join(f"{k}={v}" for k, v in node.get("state", {}).items() if not isinstance(v, dict | list))
        line = f"{pad}{node['name']} ({node['actor_class']}, pid {node['pid']}) {state}".rstrip()
    else:
        line = f"{pad}{node['name']} (did not answer) {node['address']}"
    return "\n".join([line, *(format_tree(child, depth + 1) for child in node.get("children", []))])


def _stop(args: argparse.Namespace) -> int:
    from system.actor_system import admin_listening
    from system.gateway import Gateway
    from system.reaper import reap_session

    gw = Gateway.connect(admin_port=args.admin_port)
    try:
        accepted = gw.stop(drain=not args.now)
        if not accepted.watched:
            # Nobody runs `aeyon serve` for this system any more: stop it from here.
            gw.shutdown_system()
            reap_session(accepted.session_id)
    finally:
        gw.close()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while admin_listening(args.admin_port, timeout=0.2):
        if time.monotonic() > deadline:
            raise AeyonError(f"the orchestrator on admin port {args.admin_port} did not stop within "
                             f"{STOP_TIMEOUT_S:g} s")
        time.sleep(0.1)
    print(f"stopped the orchestrator on admin port {args.admin_port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
