"""`run`, `db upgrade`, `check`, `simulate`, `demo`, `completion`: running and setting up."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from monitor.cli.base import EXIT_FAILURE, EXIT_OK, Command, SettingsNeed, add_json
from monitor.config import Settings
from monitor.output import escape, json_line

COMPLETION_SHELLS = ("bash", "zsh", "tcsh")


def cmd_run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    from monitor.daemon import run_daemon

    return run_daemon(settings, args.config or environ.get("CONFERENCE_MONITOR_CONFIG"), environ)


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    from monitor.app import App
    from monitor.db.engine import upgrade

    app = App.open(settings)
    try:
        before, after = upgrade(app.engine)
    finally:
        app.close()
    where = settings.database.safe_url
    if before == after:
        print(f"database {where} is up to date (revision {after})")
    else:
        print(f"database {where} upgraded from {before or 'empty'} to {after}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, settings: Settings, _env: Mapping[str, str]) -> int:
    from monitor.check import run_checks

    results = run_checks(settings, offline=args.offline, contact_notifiers=args.notifiers)
    for r in results:
        if args.json:
            print(json_line({"check": r.name, "status": r.status, "detail": r.detail}))
        else:
            label = {"ok": "ok", "fail": "FAIL", "skipped": "skip"}[r.status]
            print(f"{label:6}{r.name:9} {escape(r.detail)}")
    return EXIT_FAILURE if any(r.failed for r in results) else EXIT_OK


def _check_needs(args: argparse.Namespace) -> SettingsNeed:
    return "lenient" if args.offline and not args.notifiers else "full"


def cmd_simulate(args: argparse.Namespace, _settings: None, _env: Mapping[str, str]) -> int:
    from monitor.simulator.server import serve_forever

    serve_forever(args.host, args.port, args.account_sid, args.auth_token)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, _settings: None, _env: Mapping[str, str]) -> int:
    from monitor.demo import run_demo

    return run_demo(keep=args.keep)


def cmd_completion(args: argparse.Namespace, _settings: None, _env: Mapping[str, str]) -> int:
    import shtab

    from monitor.cli.commands import parser

    print(shtab.complete(parser(), shell=args.shell), end="")
    return EXIT_OK


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--offline",
        action="store_true",
        help="skip the call to Twilio, so no credentials are needed",
    )
    parser.add_argument(
        "--notifiers",
        action="store_true",
        help="also send each notifier a clearly marked test message (default: only check "
        "that each one's configuration is complete)",
    )
    add_json(parser, "one JSON object per check: check, status (ok, fail, skipped), detail")


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    from monitor.simulator.server import DEFAULT_AUTH_TOKEN
    from monitor.simulator.state import DEFAULT_ACCOUNT_SID

    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    parser.add_argument(
        "--account-sid",
        metavar="AC...",
        default=DEFAULT_ACCOUNT_SID,
        help="the account SID the simulator accepts",
    )
    parser.add_argument(
        "--auth-token",
        metavar="TOKEN",
        default=DEFAULT_AUTH_TOKEN,
        help="the auth token the simulator accepts (a test value, not a secret)",
    )


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (database, config)"
    )


def _completion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete for")


COMMANDS = (
    Command(
        "run",
        cmd_run,
        "run the daemon in the foreground (systemd Type=notify aware)",
        (
            "conference-monitor run",
            "conference-monitor --config /etc/conference-monitor/config.toml run",
        ),
        description="Run the daemon in the foreground: poll, detect, notify. SIGTERM or "
        "SIGINT stop it cleanly; SIGHUP reloads the configuration. It refuses a database "
        "schema that is behind (run `db upgrade`).",
        settings="full",
    ),
    Command(
        "db upgrade",
        cmd_db_upgrade,
        "create or migrate the database schema (safe to repeat)",
        (
            "conference-monitor db upgrade",
            "conference-monitor --config /etc/conference-monitor/config.toml db upgrade",
        ),
    ),
    Command(
        "check",
        cmd_check,
        "validate the config, reach the database, verify the Twilio credentials",
        (
            "conference-monitor check --config config.toml",
            "conference-monitor check --offline --json",
        ),
        _check_arguments,
        settings_for=_check_needs,
    ),
    Command(
        "simulate",
        cmd_simulate,
        "serve the Twilio conference API simulator on loopback",
        ("conference-monitor simulate --port 8765",),
        _simulate_arguments,
        settings="none",
    ),
    Command(
        "demo",
        cmd_demo,
        "the whole pipeline on this machine, no Twilio account needed (about 15 s)",
        ("conference-monitor demo",),
        _demo_arguments,
        settings="none",
    ),
    Command(
        "completion",
        cmd_completion,
        "print a shell completion script",
        (
            "conference-monitor completion bash > /etc/bash_completion.d/conference-monitor",
            'eval "$(conference-monitor completion bash)"',
            "conference-monitor completion zsh > ~/.zfunc/_conference-monitor",
        ),
        _completion_arguments,
        settings="none",
    ),
)
