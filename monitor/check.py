"""`check`: the config is valid (it loaded), each notifier complete, the database answers,
Twilio accepts us. Notifiers are contacted (a marked test message) only with `--notifiers`.

Each check gives one result; secrets never appear, only where they came from.
`offline` skips the call to Twilio (and so needs no credentials).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from monitor.app import App, build_client, effective_notifiers
from monitor.config import NotifierSettings, Settings
from monitor.db.engine import require_current_schema


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # ok | fail | skipped
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"


def _database(settings: Settings) -> str:
    app = App.open(settings)
    try:
        require_current_schema(app.engine)
        counts = app.store.watch_counts()
    finally:
        app.close()
    return f"{settings.database.safe_url} reachable, schema current, {sum(counts.values())} watches"


def _twilio(settings: Settings) -> str:
    client = build_client(settings)
    try:
        client.verify_credentials()
    finally:
        client.close()
    tw = settings.twilio
    kind = "API key " + (tw.api_key or "") if tw.api_key else "auth token"
    return f"account {tw.account_sid} accepted ({kind}) at {client.base_url}"


def _config(settings: Settings) -> str:
    names = ", ".join(f"{n.name} ({n.type})" for n in effective_notifiers(settings))
    source = settings.source or "built-in defaults"
    return f"{source} valid; polling every {settings.polling.interval_s:g}s; notifiers: {names}"


def _notifier_checks(
    settings: Settings, contact: bool
) -> list[tuple[str, Callable[[Settings], str]]]:
    """One line per notifier: complete and buildable; with `contact`, a sample sent too."""
    from monitor.notify.factory import describe
    from monitor.notify.testsend import send_samples

    def check(spec: NotifierSettings) -> Callable[[Settings], str]:
        def run(_settings: Settings) -> str:
            line = f"{spec.name} ({spec.type}) {describe(spec)}"
            if contact:
                (sent,) = send_samples([spec])
                if not sent.ok:
                    raise RuntimeError(f"{spec.name} ({spec.type}) test message: {sent.detail}")
                line += f"; test message {sent.detail}"
            return line

        return run

    return [("notifier", check(spec)) for spec in effective_notifiers(settings)]


def run_checks(
    settings: Settings, *, offline: bool = False, contact_notifiers: bool = False
) -> list[CheckResult]:
    checks: list[tuple[str, Callable[[Settings], str]]] = [
        ("config", _config),
        *_notifier_checks(settings, contact_notifiers),
        ("database", _database),
        ("twilio", _twilio),
    ]
    results = []
    for name, check in checks:
        if offline and name == "twilio":
            results.append(CheckResult(name, "skipped", "--offline: credentials not verified"))
            continue
        try:
            results.append(CheckResult(name, "ok", check(settings)))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            results.append(CheckResult(name, "fail", first))
    return results
