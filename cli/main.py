"""``recsys``: run the pipeline or one flow, serve the API, manage a local Prefect server.

Each flow command's options come from the flow function's signature (``python flows/<name>.py``
takes the same ones). A failure ends with a short message naming what to set; the full
traceback goes to ``$RECSYS_HOME/logs/recsys.log`` (or to the screen with ``--debug``).
"""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from cli.options import add_flow_options, flow_kwargs

PROG = "recsys"
DESCRIPTION = """\
The MovieLens recommender pipeline: run it or one of its flows, serve the API, and keep a local
Prefect server. `recsys COMMAND --help` lists a command's options and their defaults.

A failure ends with what to set or do; its full traceback is in $RECSYS_HOME/logs/recsys.log
(or on the screen with --debug). Settings come from RECSYS_* variables or .env (README)."""
log = logging.getLogger("recsys.cli")


@dataclass(frozen=True)
class FlowCommand:
    """A command that runs one flow: where the flow is and how its result is summarised."""

    module: str
    flow: str
    help: str

    def load(self) -> Any:
        return getattr(importlib.import_module(self.module), self.flow)


FLOW_COMMANDS: dict[str, FlowCommand] = {
    "run": FlowCommand(
        "flows.pipeline", "pipeline", "the whole pipeline: ingest, transform, train, report"
    ),  # fmt: skip
    "ingest": FlowCommand("flows.ingest", "ingest", "fetch, verify and store the archive raw"),
    "transform": FlowCommand(
        "flows.transform", "transform", "curate, featurise and load into PostgreSQL"
    ),  # fmt: skip
    "train": FlowCommand(
        "flows.train", "train", "sweep the models, promote a champion, write top-N"
    ),  # fmt: skip
    "report": FlowCommand(
        "flows.report", "report", "plots, report.md, Prefect artifact, ThingsBoard"
    ),  # fmt: skip
    "health": FlowCommand("flows.health", "health", "probe every configured part of the stack"),
}


class CommandParser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) that says where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str], prog: str = PROG) -> CommandParser:
    """The parser; only the command being run (or asked for help) imports its flow."""
    parser = CommandParser(prog=prog, description=DESCRIPTION, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--debug", action="store_true", default=False,
                        help="print the full traceback of a failure on the screen")  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=CommandParser)  # fmt: skip
    chosen = _chosen_command(argv)
    for name, command in FLOW_COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, allow_abbrev=False,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        _add_debug(sub)
        if name == chosen:
            _add_flow(sub, name)
    serve = commands.add_parser("serve", help="serve the API (like python -m api)",
                                allow_abbrev=False)  # fmt: skip
    _add_debug(serve)
    if chosen == "serve":
        _add_serve_options(serve)
    server = commands.add_parser("server", help="a local Prefect server: start, stop, status",
                                 allow_abbrev=False)  # fmt: skip
    _add_debug(server)
    server_actions = server.add_subparsers(dest="action", metavar="ACTION", required=True,
                                           parser_class=CommandParser)  # fmt: skip
    start = server_actions.add_parser(
        "start", help="start it in the background (PREFECT_HOME=$RECSYS_HOME/prefect)"
    )
    start.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    start.add_argument("--port", type=int, default=4200, help="(default: %(default)s)")
    server_actions.add_parser("stop", help="stop it")
    server_actions.add_parser("status", help="whether it is up, and its URL")
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback of a failure on the screen")  # fmt: skip


def _add_flow(parser: argparse.ArgumentParser, name: str) -> None:
    """The flow's docstring as the command's description, its parameters as options."""
    command = FLOW_COMMANDS[name]
    fn = command.load().fn
    parser.description = f"{command.help}.\n\n{inspect.getdoc(fn) or ''}"
    add_flow_options(parser, fn)


def _add_serve_options(parser: argparse.ArgumentParser) -> None:
    from tasks.config import load_settings

    settings = load_settings()
    group = parser.add_argument_group("server options (defaults from the settings)")
    group.add_argument(
        "--host",
        default=settings.api_host,
        help="address to listen on; RECSYS_API_HOST (default: %(default)s)",
    )
    group.add_argument(
        "--port",
        type=int,
        default=settings.api_port,
        help="port; RECSYS_API_PORT (default: %(default)s)",
    )
    group.add_argument("--workers", type=int, default=settings.api_workers,
                       help="uvicorn worker processes; RECSYS_API_WORKERS "
                       "(default: %(default)s)")  # fmt: skip


def parse(argv: Sequence[str], prog: str = PROG) -> argparse.Namespace:
    """Parse a command line (exits 2 with one line on an unknown option or bad value)."""
    args, unknown = build_parser(argv, prog).parse_known_args(list(argv))
    if unknown:
        command = " ".join(part for part in (args.command, getattr(args, "action", None)) if part)
        CommandParser(prog=f"{prog} {command}").error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    return args


def flow_parser(name: str, prog: str) -> CommandParser:
    """The options of one flow command alone: what ``python flows/<name>.py`` reads."""
    parser = CommandParser(prog=prog, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--debug", action="store_true", default=False,
                        help="print the full traceback of a failure on the screen")  # fmt: skip
    _add_flow(parser, name)
    parser.set_defaults(command=name)
    return parser


def flow_script(name: str, argv: Sequence[str] | None = None) -> int:
    """``python flows/<file>.py [options]``: the flow command ``name`` under its script's name."""
    script = FLOW_COMMANDS[name].module.split(".")[-1]
    return main(argv, prog=f"python flows/{script}.py", command=name)


def main(argv: Sequence[str] | None = None, prog: str = PROG, command: str | None = None) -> int:
    """The console script: run the command line (or, given ``command``, that flow command with
    ``argv`` as its options); return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    settings = None
    log_file = None
    try:
        # parsed first: help and usage errors need no settings
        args = (
            flow_parser(command, prog).parse_args(arguments) if command else parse(arguments, prog)
        )
        settings = _settings()
        log_file = _log_to_file(settings.home, debug)
        return run_command(args, settings)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        log_file = log_file or _log_to_file(_home_of(settings), debug)
        log.exception("%s failed", " ".join([prog, *arguments]))
        _stop_temporary_server()  # its "Stopping temporary server" line comes before ours
        label = prog if command else f"{prog} {_chosen_command(arguments) or ''}".strip()
        return report_failure(exc, settings, label, log_file, debug)


def run_command(args: argparse.Namespace, settings: Any) -> int:
    if args.command in FLOW_COMMANDS:
        return run_flow(args.command, args)
    if args.command == "serve":
        return serve(args)
    return manage_server(args, settings)


def run_flow(name: str, args: argparse.Namespace) -> int:
    """Run one flow in the project's Prefect environment and print its summary."""
    from tasks.orchestration import prefect_environment

    command = FLOW_COMMANDS[name]
    flow = command.load()
    kwargs = flow_kwargs(args, flow.fn)
    with prefect_environment() as settings:
        result = flow(**kwargs)
    print(summary(name, result, settings))
    return 0


def summary(name: str, result: Any, settings: Any) -> str:
    """The closing lines of a successful run."""
    if name == "run":
        from flows.pipeline import where_to_look

        return "\n" + where_to_look(settings, result)
    if name == "ingest":
        return (f"Raw {result.dataset} stored at {result.lake_url}/{result.prefix} "
                f"({len(result.files)} files)")  # fmt: skip
    if name == "transform":
        state = "loaded" if result.loaded else "already current"
        return f"Warehouse {state}: {result.dataset} version {result.version} {result.row_counts}"
    if name == "train":
        return f"Champion: version {result.champion_version or 'none yet'}. {result.outcome}"
    if name == "report":
        return f"Report: {result.folder}/report.md"
    return "Stack healthy"


def serve(args: argparse.Namespace) -> int:
    """``python -m api`` with the given address and workers (each worker reads the settings)."""
    os.environ["RECSYS_API_HOST"] = args.host
    os.environ["RECSYS_API_PORT"] = str(args.port)
    os.environ["RECSYS_API_WORKERS"] = str(args.workers)
    from api.__main__ import main as serve_api

    serve_api()
    return 0


def manage_server(args: argparse.Namespace, settings: Any) -> int:
    """``server start|stop|status``: exit 0 when the server is (now) up or stopped."""
    from cli import server

    if args.action == "start":
        started = server.start_server(settings, args.host, args.port)
        print(
            f"Prefect server up at {started.url} (pid {started.pid}, "
            f"PREFECT_HOME={settings.resolved_prefect_home}); log: {server.server_log(settings)}"
        )
        print("Local runs (recsys, python flows/*.py) now use it; stop it with: recsys server stop")
        return 0
    if args.action == "stop":
        stopped = server.stop_server(settings)
        print(f"Prefect server stopped (pid {stopped.pid})" if stopped else
              "Prefect server: not running")  # fmt: skip
        return 0
    line = server.server_status(settings)
    print(line)
    return 0 if " up at " in line else 1


def _stop_temporary_server() -> None:
    """Stop Prefect's temporary API server now instead of at interpreter exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    # what the run still has to send goes first (its workers would send it at exit)
    APILogWorker.drain_all(timeout=5)
    EventsWorker.drain_all(timeout=5)
    # Prefect's registry of the servers it started in this process (it stops them at exit)
    for server in list(getattr(SubprocessASGIServer, "_instances", {}).values()):
        server.stop()


def _settings() -> Any:
    from tasks.config import load_settings

    return load_settings()


def _home_of(settings: Any) -> Path:
    """The project home, even when the settings are invalid (the valid fields still count)."""
    if settings is not None:
        return Path(settings.home)
    from tasks.config import Settings, load_settings

    try:
        return load_settings().home
    except ValidationError as exc:
        defaults = {str(e["loc"][0]): Settings.model_fields[str(e["loc"][0])].default
                    for e in exc.errors() if e["loc"] and str(e["loc"][0]) in
                    Settings.model_fields}  # fmt: skip
        try:
            return load_settings(**defaults).home
        except ValidationError:
            return Path(".recsys").resolve()


def _log_to_file(home: Path, debug: bool) -> Path:
    """Send every record, tracebacks included, to the log file; keep tracebacks off the
    screen unless ``debug``. Returns the file."""
    from prefect.logging.configuration import ensure_logging_setup

    # Prefect first: it leaves the root logger's console handler out when it finds one of ours
    ensure_logging_setup()
    path = home / "logs" / "recsys.log"
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # the command line's own record of a failure goes to the file only: the screen gets the
    # short explanation
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    if not debug:
        _quiet_tracebacks_on_screen()
    return path


def _quiet_tracebacks_on_screen() -> None:
    """Console handlers print each record's message without its traceback (the file has it)."""
    loggers = [logging.getLogger()] + [
        logger for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]  # fmt: skip
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setFormatter(WithoutTraceback(handler.formatter))


class WithoutTraceback(logging.Formatter):
    """Formats a copy of the record without its exception and stack information."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def report_failure(
    exc: BaseException, settings: Any, label: str, log_file: Path, debug: bool
) -> int:
    """Print the short explanation (and with ``debug`` the traceback); return the exit code."""
    from tasks.errors import explain_failure

    explanation = explain_failure(exc, settings)
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    lines = [f"{label} failed: {explanation.what}"]
    if explanation.action:
        lines.append(f"  {explanation.action}")
    if not debug:
        lines.append(f"  Full traceback: {log_file} (or rerun with --debug)")
    print("\n".join(lines), file=sys.stderr)
    return 1


def main_script() -> None:
    """The ``recsys`` console script's entry point."""
    sys.exit(main())
