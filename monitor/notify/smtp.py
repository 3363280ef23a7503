"""E-mail through an SMTP server: STARTTLS or implicit TLS, login from a secret, plain text.

One message per event, its `Message-ID` derived from the event id, so a retry after
a lost answer is recognisably the same mail. SMTP 5xx answers are permanent, 4xx and
broken connections are retried. The password (and the encodings AUTH sends it in)
never appears in an error. The whole exchange is bounded by `timeout_s`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import smtplib
import socket
import ssl
from base64 import b64encode
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate

from monitor.notify import deadline
from monitor.notify.base import DeliveryError, Message
from monitor.notify.content import describe

log = logging.getLogger("monitor.notify")

SUBJECT_PREFIX = "[conference-monitor] "
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_DETAIL_CHARS = 200


class EmailNotifier:
    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        mail_from: str,
        mail_to: Sequence[str],
        tls: str = "starttls",
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        if tls not in ("starttls", "implicit", "none"):
            raise ValueError(f"email {name!r}: tls must be starttls, implicit or none")
        if (username is None) != (password is None):
            raise ValueError(f"email {name!r}: username and password go together")
        if password is not None and tls == "none":
            raise ValueError(f"email {name!r}: a password needs TLS")
        if not mail_to:
            raise ValueError(f"email {name!r}: at least one recipient is needed")
        self.name = name
        self.host, self.port, self.tls = host, port, tls
        self.mail_from, self.mail_to = mail_from, tuple(mail_to)
        self.timeout_s = timeout_s
        self.safe_url = f"smtp://{host}:{port}"
        self._login = (username, password) if username is not None and password else None
        self._context = ssl.create_default_context(cafile=ca_file) if tls != "none" else None
        self._scrub = _scrub_values(username, password)

    def __repr__(self) -> str:
        return f"EmailNotifier(name={self.name!r}, server={self.safe_url!r}, tls={self.tls!r})"

    def compose(self, message: Message) -> EmailMessage:
        content = describe(message)
        mail = EmailMessage()
        mail["Subject"] = _one_line(SUBJECT_PREFIX + content.title)[:250]
        mail["From"] = self.mail_from
        mail["To"] = ", ".join(self.mail_to)
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = f"<{message.event_id}@conference-monitor>"
        mail["X-Conference-Monitor-Event"] = message.event_type
        footer = f"\n\n-- \nconference-monitor, event {message.event_id} ({message.event_type})\n"
        mail.set_content(content.text() + footer)
        return mail

    def send(self, message: Message) -> None:
        mail = self.compose(message)
        with deadline.start(self.timeout_s) as limit:
            try:
                refused = self._exchange(mail, limit)
            except smtplib.SMTPResponseException as exc:
                raise self._answered(exc.smtp_code, exc.smtp_error, limit) from None
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _ in exc.recipients.values()]
                raise self._refused(codes) from None
            except (smtplib.SMTPException, OSError) as exc:
                raise self._broken(exc, limit) from None
        if refused:
            log.warning(
                "%s: %d of %d recipients refused by %s",
                self.name,
                len(refused),
                len(self.mail_to),
                self.safe_url,
                extra={"event": "email.partly_refused", "notifier": self.name},
            )

    def close(self) -> None:
        pass

    def _exchange(self, mail: EmailMessage, limit: deadline.Deadline) -> dict[str, object]:
        client: smtplib.SMTP
        if self.tls == "implicit":
            client = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout_s, context=self._context
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        try:
            limit.watch(client.sock)
            client.ehlo()
            if self.tls == "starttls":
                client.starttls(context=self._context)
                limit.watch(client.sock)
                client.ehlo()
            if self._login is not None:
                client.login(*self._login)
            refused: dict[str, object] = dict(client.send_message(mail))
        except BaseException:
            client.close()
            raise
        # Sent: a server that fumbles the goodbye must not turn that into a retry.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()
        return refused

    def _answered(self, code: int, text: bytes | str, limit: deadline.Deadline) -> DeliveryError:
        detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        message = f"SMTP {self.safe_url}: {code} {self._clean(detail)}"
        if limit.expired:
            return DeliveryError(f"SMTP {self.safe_url}: no answer within {self.timeout_s:g}s")
        return DeliveryError(message, permanent=500 <= code < 600, status_code=code)

    def _refused(self, codes: list[int]) -> DeliveryError:
        permanent = bool(codes) and all(500 <= c < 600 for c in codes)
        shown = ", ".join(str(c) for c in sorted(set(codes)))
        return DeliveryError(
            f"SMTP {self.safe_url}: every recipient refused ({shown})",
            permanent=permanent,
            status_code=max(codes) if codes else None,
        )

    def _broken(self, exc: BaseException, limit: deadline.Deadline) -> DeliveryError:
        where = f"SMTP {self.safe_url}"
        if limit.expired:
            return DeliveryError(f"{where}: no complete exchange within {self.timeout_s:g}s")
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return DeliveryError(f"{where}: {self._clean(str(exc))}", permanent=True)
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = exc.verify_message or "verification failed"
            return DeliveryError(f"{where}: TLS certificate not trusted: {why}")
        if isinstance(exc, TimeoutError):
            return DeliveryError(f"{where}: timed out after {self.timeout_s:g}s")
        if isinstance(exc, socket.gaierror):
            return DeliveryError(f"{where}: cannot resolve the host")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return DeliveryError(f"{where}: {self._clean(reason)}")

    def _clean(self, text: str) -> str:
        text = _one_line(text)
        for value in self._scrub:
            text = text.replace(value, "***")
        return text[:_DETAIL_CHARS]


def _one_line(text: str) -> str:
    """One printable line: a server's (or a friendly name's) controls never reach a screen."""
    return "".join(c if c.isprintable() else " " for c in _CONTROL.sub(" ", text)).strip()


def _scrub_values(username: str | None, password: str | None) -> tuple[str, ...]:
    if not password:
        return ()
    plain = f"\0{username or ''}\0{password}".encode()
    values = {password, b64encode(password.encode()).decode(), b64encode(plain).decode()}
    return tuple(sorted(values, key=len, reverse=True))
