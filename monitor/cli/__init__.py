"""The command line: parse, call one handler, print. Exit 0 / 1 / 2.

0 is success, 1 a runtime failure (database, Twilio), 2 bad usage or bad
configuration. Output to a closed pipe (`... --json | head`) ends quietly with 0.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from monitor import logs
from monitor.app import MissingCredentials
from monitor.cli.base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError
from monitor.config import ConfigError, load_settings
from monitor.db.engine import SchemaBehind
from monitor.output import escape

__all__ = ["main"]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    _tolerant_output()
    try:
        code = _main(argv, environ)
        sys.stdout.flush()  # inside the try: a reader that left is not an error
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_OK


def _main(argv: Sequence[str] | None, environ: Mapping[str, str]) -> int:
    from monitor.cli.commands import parser

    args = parser().parse_args(argv)
    command = args.command
    if command is None:
        args.help_parser.print_help()
        return EXIT_USAGE
    try:
        need = command.needs(args)
        settings = None
        if need != "none":
            settings = load_settings(args.config, environ, require_secrets=need == "full")
        logs.configure(
            getattr(args, "log_format", None) or (settings.logging.format if settings else "plain"),
            getattr(args, "log_level", None) or (settings.logging.level if settings else "INFO"),
            environ,
        )
        return int(command.handler(args, settings, environ))
    except ConfigError as exc:
        print(f"configuration error:\n{escape_lines(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"error: {escape_lines(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (SchemaBehind, MissingCredentials) as exc:
        print(f"error: {escape(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # a runtime failure: say what, not a traceback
        logging.getLogger("monitor").debug("command failed", exc_info=True)
        print(f"error: {escape(_first_line(exc))}", file=sys.stderr)
        return EXIT_FAILURE


def escape_lines(text: str) -> str:
    """Escaped, keeping the line breaks of a message made of several lines."""
    return "\n".join(escape(line) for line in text.split("\n"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _tolerant_output() -> None:
    """A character the terminal's encoding lacks is shown escaped instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def _discard_stdout() -> None:
    """The reader left: send what is still buffered nowhere, so exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
