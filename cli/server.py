"""``recsys server start|stop|status``: the project's own Prefect server, in the background, with
Prefect's home under RECSYS_HOME; local runs find it by its pid file and use it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tasks.config import PREFECT_SERVER_SETTINGS, Settings
from tasks.orchestration import (
    LocalServer,
    local_server_file,
    process_alive,
    read_local_server,
    running_local_server,
    server_healthy,
)

START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 20.0


class ServerError(RuntimeError):
    """The local Prefect server did not start or stop; the message says why and where to look."""


def server_log(settings: Settings) -> Path:
    return settings.home / "logs" / "prefect-server.log"


def start_server(settings: Settings, host: str, port: int) -> LocalServer:
    """Start ``prefect server start`` detached, wait until it answers, record its pid and URL."""
    running = running_local_server(settings)
    if running is not None:
        return running
    url = f"http://{host}:{port}"
    if server_healthy(url):
        raise ServerError(
            f"another Prefect server already answers on {url} (not this project's home). "
            "Stop it, or choose another port: recsys server start --port 4201"
        )
    log = server_log(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    settings.resolved_prefect_home.mkdir(parents=True, exist_ok=True)
    # the child's environment: this one's, with the project's Prefect home; never a client URL
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(settings.resolved_prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env |= {k: str(v) for k, v in PREFECT_SERVER_SETTINGS.items() if k not in env}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host,
               "--port", str(port), "--no-prompt"]  # fmt: skip
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop ends it and its children
        )  # fmt: skip
    server = LocalServer(pid=process.pid, url=url)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server_healthy(url):
        if process.poll() is not None:
            raise ServerError(f"the Prefect server exited with code {process.returncode}; "
                              f"see its log {log}")  # fmt: skip
        if time.monotonic() > deadline:
            _end_group(process.pid)
            raise ServerError(f"the Prefect server did not answer on {url} within "
                              f"{START_TIMEOUT_SECONDS:.0f} s; see its log {log}")  # fmt: skip
        time.sleep(0.25)
    local_server_file(settings).write_text(json.dumps({"pid": server.pid, "url": server.url}))
    return server


def stop_server(settings: Settings) -> LocalServer | None:
    """Stop the recorded server (its whole process group); None when none was recorded."""
    server = read_local_server(settings)
    if server is not None and process_alive(server.pid):
        _end_group(server.pid)
    local_server_file(settings).unlink(missing_ok=True)
    return server


def _end_group(pid: int) -> None:
    """SIGTERM the group the server leads, then SIGKILL what is left after the timeout."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # the leader may linger as our zombie child when this process started it
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    return process_alive(pgid)


def server_status(settings: Settings) -> str:
    """One line: up at its URL (and where its home and log are), or not running."""
    server = read_local_server(settings)
    if server is None:
        return "Prefect server: not running (start it with: recsys server start)"
    if running_local_server(settings) is None:
        state = "running but not answering" if process_alive(server.pid) else "not running"
        return (f"Prefect server: {state} (pid {server.pid}, {server.url}); "
                f"see {server_log(settings)}")  # fmt: skip
    return (f"Prefect server: up at {server.url} (pid {server.pid}, "
            f"PREFECT_HOME={settings.resolved_prefect_home})")  # fmt: skip
