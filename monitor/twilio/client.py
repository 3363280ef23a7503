"""The only code that talks to Twilio: one connection pool, bounded calls, typed errors.

Every call (a fetch, or one list page) ends within `request_deadline_s`: connect,
headers, the whole body of every attempt, retries and the waits between them.
Bodies are capped (`max_body_bytes`, `max_page_bytes`) and read incrementally,
so neither a slow nor a huge response can stall or flood the caller. The hot
path (a successful fetch) is one request, one bounded read, one `orjson.loads`
and one parse; retry bookkeeping (tenacity's wait and stop strategies, built
once) only runs after a failure.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from datetime import date
from functools import partial
from types import TracebackType
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from monitor import __version__
from monitor.domain import Conference, is_account_sid, is_conference_sid
from monitor.twilio.decode import (
    Parser,
    flatten,
    paging_error,
    parse_body,
    parse_fetched,
    parse_page,
)
from monitor.twilio.errors import (
    RateLimited,
    TransientError,
    TwilioError,
    error_for_response,
)
from monitor.twilio.exchange import MIN_TIMEOUT_S, Exchanger, Request, ResponseHook
from monitor.twilio.hosts import DEFAULT_BASE_URL, api_origin, normalise_base_url
from monitor.twilio.payloads import ConferencePage
from monitor.twilio.transport import Pool

log = logging.getLogger("monitor.twilio")

__all__ = ["DEFAULT_BASE_URL", "ResponseHook", "TwilioClient"]

DEFAULT_USER_AGENT = f"conference-monitor/{__version__}"
API_PREFIX = "/2010-04-01/Accounts/"
MAX_PAGE_SIZE = 1000
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 2.0
DEFAULT_REQUEST_DEADLINE_S = 4.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_PAGE_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PAGES = 1000
_END_FORM = {"Status": "completed"}

T = TypeVar("T")


class TwilioClient:
    """A thread-safe client for the Conference resource of one account's credentials.

    `username`/`password` are `AccountSid`/`AuthToken` or an API key `SK...`/secret;
    the path always carries `account_sid` (or the per-call override, for a
    subaccount). Run at most `pool_size` calls at once to keep connections reused.
    """

    host_for = staticmethod(api_origin)

    def __init__(
        self,
        *,
        account_sid: str,
        username: str,
        password: str,
        base_url: str = DEFAULT_BASE_URL,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 5.0,
        pool_size: int = 10,
        retry_budget_s: float = 4.0,
        max_attempts: int = 4,
        user_agent: str = DEFAULT_USER_AGENT,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        on_response: ResponseHook | None = None,
        request_deadline_s: float = DEFAULT_REQUEST_DEADLINE_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        _check_account(account_sid)
        if not username or not password:
            raise ValueError("Twilio username and password must both be non-empty")
        _check_positive(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        _check_positive(retry_budget_s=retry_budget_s, backoff_max_s=backoff_max_s)
        _check_positive(backoff_initial_s=backoff_initial_s, pool_size=pool_size)
        _check_positive(max_attempts=max_attempts, request_deadline_s=request_deadline_s)
        _check_positive(max_body_bytes=max_body_bytes, max_page_bytes=max_page_bytes)
        _check_positive(max_pages=max_pages)
        self.account_sid = account_sid
        self.base_url = normalise_base_url(base_url)
        self.request_deadline_s = request_deadline_s
        self.retry_budget_s = min(retry_budget_s, request_deadline_s)
        self.max_body_bytes = max_body_bytes
        self.max_page_bytes = max_page_bytes
        self.max_pages = max_pages
        self._password = password
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        headers = {
            "User-Agent": user_agent,
            "Accept": "application/json",
            # Bodies are capped and parsed as they arrive: never compressed.
            "Accept-Encoding": "identity",
            "Authorization": f"Basic {credentials}",
        }
        self._pool = Pool(self.base_url, pool_size, headers)
        timeouts = (connect_timeout_s, read_timeout_s)
        self._exchanger = Exchanger(self._pool, timeouts, request_deadline_s, on_response)
        # Built once; its stop and wait strategies drive the hand loop in `_call`.
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts) | stop_before_delay(self.retry_budget_s),
            wait=wait_random_exponential(
                multiplier=backoff_initial_s, max=backoff_max_s, min=backoff_initial_s / 2
            ),
            reraise=True,
        )

    @property
    def pool(self) -> Pool:
        """The connection pool, for inspection (pool size, headers); do not share it."""
        return self._pool

    def fetch_conference(self, sid: str, *, account_sid: str | None = None) -> Conference:
        """One GET of the conference; `ConferenceNotFound` on 404 (not retried)."""
        account = self._account(account_sid)
        url = self._conference_url(sid, account)
        parse = partial(parse_fetched, sid=sid, account_sid=account)
        return self._call(Request("fetch", "GET", url, sid, self.max_body_bytes), parse)

    def end_conference(self, sid: str, *, account_sid: str | None = None) -> Conference:
        """POST `Status=completed`; repeated only when Twilio cannot have processed it."""
        account = self._account(account_sid)
        url = self._conference_url(sid, account)
        parse = partial(parse_fetched, sid=sid, account_sid=account)
        request = Request("end", "POST", url, sid, self.max_body_bytes, data=_END_FORM)
        return self._call(request, parse, idempotent=False)

    def list_conference_pages(
        self,
        *,
        status: str | None = None,
        friendly_name: str | None = None,
        date_created_after: date | None = None,
        page_size: int = MAX_PAGE_SIZE,
        account_sid: str | None = None,
        date_created_before: date | None = None,
    ) -> Iterator[ConferencePage]:
        """Every page of the matching conferences, each yielded as it arrives.

        Dates are whole UTC days, inclusive (`DateCreated>` / `DateCreated<`).
        Items stay raw (see `ConferencePage`). Arguments are checked now;
        requests happen as the iterator is consumed. A `next_page_uri` seen
        before, or more than `max_pages` pages, raises `PagingError`.
        """
        account = self._account(account_sid)
        params = _list_params(
            status, friendly_name, date_created_after, date_created_before, page_size
        )
        return self._pages(f"{self._account_url(account)}/Conferences.json", params, account)

    def list_conferences(
        self,
        *,
        status: str | None = None,
        friendly_name: str | None = None,
        date_created_after: date | None = None,
        page_size: int = MAX_PAGE_SIZE,
        account_sid: str | None = None,
        date_created_before: date | None = None,
    ) -> Iterator[Conference]:
        """Every matching conference of `list_conference_pages`, parsed.

        An item that does not parse (or is of another account) is logged and skipped.
        """
        pages = self.list_conference_pages(
            status=status,
            friendly_name=friendly_name,
            date_created_after=date_created_after,
            page_size=page_size,
            account_sid=account_sid,
            date_created_before=date_created_before,
        )
        return flatten(pages)

    def verify_credentials(self, account_sid: str | None = None) -> None:
        """One cheap list call; raises `CredentialsRejected` (or another TwilioError)."""
        account = self._account(account_sid)
        url = f"{self._account_url(account)}/Conferences.json"
        parse = partial(parse_page, account_sid=account)
        params = {"PageSize": "1"}
        self._call(Request("verify", "GET", url, None, self.max_page_bytes, params), parse)

    def close(self) -> None:
        """Close every pooled connection now."""
        self._pool.close()

    def __enter__(self) -> TwilioClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _account(self, account_sid: str | None) -> str:
        if account_sid is None:
            return self.account_sid
        _check_account(account_sid)
        return account_sid

    def _account_url(self, account_sid: str) -> str:
        return f"{self.base_url}{API_PREFIX}{account_sid}"

    def _conference_url(self, sid: str, account_sid: str) -> str:
        if not is_conference_sid(sid):
            raise ValueError(f"malformed conference sid {sid!r} (expected CF + 32 hex digits)")
        return f"{self._account_url(account_sid)}/Conferences/{sid}.json"

    def _pages(
        self, url: str, params: dict[str, str], account_sid: str
    ) -> Iterator[ConferencePage]:
        parse = partial(parse_page, account_sid=account_sid)
        cap = self.max_page_bytes
        page: ConferencePage = self._call(Request("list", "GET", url, None, cap, params), parse)
        yield page
        seen: set[str] = set()
        count = 1
        while page.next_page_uri:
            uri = page.next_page_uri
            if uri in seen:
                raise paging_error(f"next_page_uri {uri[:300]!r} repeats an earlier page", url)
            if count >= self.max_pages:
                raise paging_error(f"the listing runs past max_pages={self.max_pages}", url)
            seen.add(uri)
            # Exactly as given: it carries an opaque PageToken.
            page = self._call(Request("list", "GET", self.base_url + uri, None, cap), parse)
            count += 1
            yield page

    def _call(self, request: Request, parse: Parser[T], *, idempotent: bool = True) -> T:
        """Attempt, and on a retryable failure wait and try again within budget and deadline."""
        start = time.monotonic()
        deadline_at = start + self.request_deadline_s
        state: RetryCallState | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(request, parse, deadline_at)
            except TwilioError as exc:
                exc.attempts = attempt
                if not _retryable(exc, idempotent):
                    raise
                if state is None:
                    state = RetryCallState(self._retrying, None, (), {})
                    state.start_time = start
                wait = self._next_wait(state, exc, deadline_at)
                if wait is None:
                    raise
                _log_retry(request, wait, exc)
                time.sleep(wait)

    def _next_wait(
        self, state: RetryCallState, exc: TwilioError, deadline_at: float
    ) -> float | None:
        """The pause before the next attempt, or None when attempts, budget or time are spent."""
        now = state.outcome_timestamp = time.monotonic()
        wait = self._retrying.wait(state)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            wait = max(wait, retry_after)
        state.upcoming_sleep = wait
        if self._retrying.stop(state) or now + wait + MIN_TIMEOUT_S >= deadline_at:
            return None
        state.prepare_for_next_attempt()
        return wait

    def _attempt(self, request: Request, parse: Parser[T], deadline_at: float) -> T:
        answer = self._exchanger.attempt(request, deadline_at)
        if answer.ok:
            return parse_body(parse, answer.body, request.url, request.sid)
        raise error_for_response(
            answer.status,
            answer.body,
            answer.retry_after,
            url=request.url,
            sid=request.sid,
            redact=self._password,
        )


def _log_retry(request: Request, wait: float, exc: TwilioError) -> None:
    log.debug(
        "twilio.retry sid=%s url=%s in %.3fs after: %s",
        request.sid or "-",
        request.url,
        wait,
        exc.reason,
        extra={"event": "twilio.retry", "sid": request.sid, "url": request.url},
    )


def _retryable(exc: TwilioError, idempotent: bool) -> bool:
    """429 means not processed; a transient failure of a POST only if it was never sent."""
    if isinstance(exc, RateLimited):
        return True
    if isinstance(exc, TransientError):
        return idempotent or not exc.request_sent
    return False


def _list_params(
    status: str | None,
    friendly_name: str | None,
    created_after: date | None,
    created_before: date | None,
    page_size: int,
) -> dict[str, str]:
    """The list query; dates use Twilio's documented `DateCreated>`/`DateCreated<` names."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
    params = {"PageSize": str(page_size)}
    if status is not None:
        params["Status"] = status
    if friendly_name is not None:
        params["FriendlyName"] = friendly_name
    if created_after is not None:
        params["DateCreated>"] = created_after.strftime("%Y-%m-%d")
    if created_before is not None:
        params["DateCreated<"] = created_before.strftime("%Y-%m-%d")
    return params


def _check_account(account_sid: str) -> None:
    if not is_account_sid(account_sid):
        raise ValueError(f"malformed account sid {account_sid!r} (expected AC + 32 hex digits)")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
