"""The last resort after a shutdown: kill whatever processes of the actor system are still alive.

Thespian's admin runs in a session of its own (it calls setsid), and every actor process is forked inside it, so
the session id names the whole actor system. ``ActorSystem.shutdown()`` gives up after 10 s when an actor cannot
take its exit request (a worker blocked in a guard call that will not answer); what it leaves is killed here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def session_processes(session_id: int) -> list[int]:
    """Live processes in the session (Linux /proc), not counting this one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command: state, ppid, pgrp, session.
        if fields[0] != "Z" and int(fields[3]) == session_id:
            found.append(int(entry))
    return found


def reap_session(session_id: int, grace_s: float = 1.0) -> list[int]:
    """Kill the session's remaining processes (after ``grace_s`` for those already exiting); the pids killed."""
    if session_id <= 1 or session_id == os.getsid(0):
        return []  # never our own session, whatever we were told
    deadline = time.monotonic() + grace_s
    while session_processes(session_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_processes(session_id)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left
