"""The only code that talks to Twilio: one pooled session, bounded retries, typed errors.

The hot path (a successful fetch) is one `Session.request`, one `json.loads` and
one parse; retry bookkeeping (tenacity's wait and stop strategies, built once)
only runs after a failure. Every retry sequence fits in `retry_budget_s`,
waits included, so a poll tick is never held up by a struggling API.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import date
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tenacity import (
    RetryCallState,
    Retrying,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from monitor import __version__
from monitor.domain import Conference, is_account_sid, is_conference_sid
from monitor.twilio.errors import (
    BadPayload,
    RateLimited,
    TransientError,
    TwilioError,
    error_for_response,
    error_for_transport,
)
from monitor.twilio.payloads import (
    ConferencePage,
    PayloadError,
    parse_conference,
    parse_conference_page,
)

log = logging.getLogger("monitor.twilio")

DEFAULT_BASE_URL = "https://api.twilio.com"
DEFAULT_USER_AGENT = f"conference-monitor/{__version__}"
API_PREFIX = "/2010-04-01/Accounts/"
MAX_PAGE_SIZE = 1000
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 2.0
_POOL_HOSTS = 4  # distinct hosts whose pools are kept; one client uses one host
_MIN_TIMEOUT_S = 0.05
_END_FORM = {"Status": "completed"}
_HOST_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)

ResponseHook = Callable[[str, int | None, float], None]
"""`on_response(operation, http_status_or_None, seconds)`, called once per HTTP attempt."""

T = TypeVar("T")
Parser = Callable[[Any, str | None], T]


class TwilioClient:
    """A thread-safe client for the Conference resource of one account's credentials.

    `username`/`password` are `AccountSid`/`AuthToken` or an API key `SK...`/secret;
    the path always carries `account_sid` (or the per-call override, for a
    subaccount). Run at most `pool_size` calls at once to keep connections reused.
    """

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
    ) -> None:
        _check_account(account_sid)
        if not username or not password:
            raise ValueError("Twilio username and password must both be non-empty")
        _check_positive(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        _check_positive(retry_budget_s=retry_budget_s, backoff_max_s=backoff_max_s)
        _check_positive(backoff_initial_s=backoff_initial_s, pool_size=pool_size)
        _check_positive(max_attempts=max_attempts)
        self.account_sid = account_sid
        self.base_url = _normalise_base_url(base_url)
        self.retry_budget_s = retry_budget_s
        self._timeout = (connect_timeout_s, read_timeout_s)
        self._password = password
        self._on_response = on_response
        self._session = _build_session(username, password, pool_size, user_agent)
        _pin_environment(self._session, self.base_url)
        # Built once; its stop and wait strategies drive the hand loop in `_call`.
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts) | stop_before_delay(retry_budget_s),
            wait=wait_random_exponential(
                multiplier=backoff_initial_s, max=backoff_max_s, min=backoff_initial_s / 2
            ),
            reraise=True,
        )

    @staticmethod
    def host_for(edge: str | None, region: str | None, base_url: str | None) -> str:
        """The API origin: an explicit `base_url`, else `api.{edge}.{region}`, else `api`.

        The short form `api.{region}.twilio.com` stopped working on 2026-04-28, so an
        edge without a region (or the reverse) is refused rather than guessed.
        """
        if base_url:
            return _normalise_base_url(base_url)
        if edge and region:
            labels = (edge.lower(), region.lower())
            for label in labels:
                if not _HOST_LABEL_RE.match(label):
                    raise ValueError(f"not a valid Twilio edge or region name: {label!r}")
            return f"https://api.{labels[0]}.{labels[1]}.twilio.com"
        if edge or region:
            raise ValueError(
                f"Twilio edge and region must be given together (edge={edge!r}, region={region!r})"
            )
        return DEFAULT_BASE_URL

    @property
    def session(self) -> requests.Session:
        """The pooled session, for inspection (adapters, headers); do not share it."""
        return self._session

    def fetch_conference(self, sid: str, *, account_sid: str | None = None) -> Conference:
        """One GET of the conference; `ConferenceNotFound` on 404 (not retried)."""
        url = self._conference_url(sid, account_sid)
        return self._call("fetch", "GET", url, sid, _parse_fetched)

    def end_conference(self, sid: str, *, account_sid: str | None = None) -> Conference:
        """POST `Status=completed`; repeated only when Twilio cannot have processed it."""
        url = self._conference_url(sid, account_sid)
        return self._call("end", "POST", url, sid, _parse_fetched, data=_END_FORM, idempotent=False)

    def list_conferences(
        self,
        *,
        status: str | None = None,
        friendly_name: str | None = None,
        date_created_after: date | None = None,
        page_size: int = MAX_PAGE_SIZE,
        account_sid: str | None = None,
    ) -> Iterator[Conference]:
        """Every matching conference, page by page (`date_created_after` is on-or-after).

        Arguments are checked now; requests happen as the iterator is consumed.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {page_size}")
        params = {"PageSize": str(page_size)}
        if status is not None:
            params["Status"] = status
        if friendly_name is not None:
            params["FriendlyName"] = friendly_name
        if date_created_after is not None:
            params["DateCreated>="] = date_created_after.strftime("%Y-%m-%d")
        return self._iter_pages(self._account_url(account_sid) + "/Conferences.json", params)

    def list_conference_pages(
        self, *, status: str | None = None, account_sid: str | None = None
    ) -> Iterator[ConferencePage]:
        """Every page of the listing, as it arrives."""
        params = {"PageSize": str(MAX_PAGE_SIZE)}
        if status is not None:
            params["Status"] = status
        url = self._account_url(account_sid) + "/Conferences.json"
        page: ConferencePage = self._call("list", "GET", url, None, _parse_page, params=params)
        yield page
        while page.next_page_uri:
            page = self._call("list", "GET", self.base_url + page.next_page_uri, None, _parse_page)
            yield page

    def verify_credentials(self, account_sid: str | None = None) -> None:
        """One cheap list call; raises `CredentialsRejected` (or another TwilioError)."""
        url = self._account_url(account_sid) + "/Conferences.json"
        self._call("verify", "GET", url, None, _parse_page, params={"PageSize": "1"})

    def close(self) -> None:
        """Close every pooled connection now.

        urllib3 2.x leaves a pool open until it is garbage collected, and a pool
        stays referenced by any response kept alive (in an exception traceback,
        say), so pools are closed explicitly rather than left to the collector.
        """
        for adapter in self._session.adapters.values():
            if isinstance(adapter, HTTPAdapter):
                pools = adapter.poolmanager.pools
                for key in pools.keys():  # noqa: SIM118 (the container cannot be iterated)
                    pool = pools.get(key)
                    if pool is not None:
                        pool.close()
        self._session.close()

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

    def _account_url(self, account_sid: str | None) -> str:
        if account_sid is None:
            account_sid = self.account_sid
        else:
            _check_account(account_sid)
        return f"{self.base_url}{API_PREFIX}{account_sid}"

    def _conference_url(self, sid: str, account_sid: str | None) -> str:
        if not is_conference_sid(sid):
            raise ValueError(f"malformed conference sid {sid!r} (expected CF + 32 hex digits)")
        return f"{self._account_url(account_sid)}/Conferences/{sid}.json"

    def _iter_pages(self, url: str, params: dict[str, str]) -> Iterator[Conference]:
        page: ConferencePage = self._call("list", "GET", url, None, _parse_page, params=params)
        yield from page.conferences
        while page.next_page_uri:
            # Exactly as given: it carries an opaque PageToken.
            url = self.base_url + page.next_page_uri
            page = self._call("list", "GET", url, None, _parse_page)
            yield from page.conferences

    def _call(
        self,
        op: str,
        method: str,
        url: str,
        sid: str | None,
        parse: Parser[T],
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> T:
        """Attempt, and on a retryable failure wait and try again within the budget."""
        start = time.monotonic()
        state: RetryCallState | None = None
        timeout = self._timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(op, method, url, sid, parse, params, data, timeout)
            except TwilioError as exc:
                exc.attempts = attempt
                if not _retryable(exc, idempotent):
                    raise
                if state is None:
                    state = RetryCallState(self._retrying, None, (), {})
                    state.start_time = start
                wait = self._next_wait(state, exc)
                if wait is None:
                    raise
                log.debug(
                    "twilio.retry sid=%s url=%s in %.3fs after: %s",
                    sid or "-",
                    url,
                    wait,
                    exc.reason,
                    extra={"event": "twilio.retry", "sid": sid, "url": url},
                )
                time.sleep(wait)
                timeout = self._remaining_timeout(start)

    def _next_wait(self, state: RetryCallState, exc: TwilioError) -> float | None:
        """The pause before the next attempt, or None when attempts or budget are spent."""
        state.outcome_timestamp = time.monotonic()
        wait = self._retrying.wait(state)
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            wait = max(wait, retry_after)
        state.upcoming_sleep = wait
        if self._retrying.stop(state):
            return None
        state.prepare_for_next_attempt()
        return wait

    def _remaining_timeout(self, start: float) -> tuple[float, float]:
        """Timeouts clipped so that a retry cannot run past the budget."""
        remaining = max(self.retry_budget_s - (time.monotonic() - start), _MIN_TIMEOUT_S)
        connect, read = self._timeout
        return (min(connect, remaining), min(read, remaining))

    def _attempt(
        self,
        op: str,
        method: str,
        url: str,
        sid: str | None,
        parse: Parser[T],
        params: dict[str, str] | None,
        data: dict[str, str] | None,
        timeout: tuple[float, float],
    ) -> T:
        began = time.perf_counter()
        try:
            response = self._session.request(
                method, url, params=params, data=data, timeout=timeout, allow_redirects=False
            )
        except _TRANSPORT_ERRORS as exc:
            self._observe(op, None, began)
            raise error_for_transport(exc, url, sid) from exc
        status = response.status_code
        self._observe(op, status, began)
        if 200 <= status < 300:
            return _parse_body(parse, response.content, url, sid)
        raise self._http_error(response, url, sid)

    def _observe(self, op: str, status: int | None, began: float) -> None:
        if self._on_response is not None:
            self._on_response(op, status, time.perf_counter() - began)

    def _http_error(self, response: requests.Response, url: str, sid: str | None) -> TwilioError:
        return error_for_response(
            response.status_code,
            response.content,
            response.headers.get("Retry-After"),
            url=url,
            sid=sid,
            redact=self._password,
        )


def _retryable(exc: TwilioError, idempotent: bool) -> bool:
    """429 means not processed; a transient failure of a POST only if it was never sent."""
    if isinstance(exc, RateLimited):
        return True
    if isinstance(exc, TransientError):
        return idempotent or not exc.request_sent
    return False


def _parse_body(parse: Parser[T], body: bytes, url: str, sid: str | None) -> T:
    """Decode and parse a 2xx body; anything malformed becomes a logged `BadPayload`."""
    try:
        return parse(json.loads(body), sid)
    except PayloadError as exc:
        reason = f"response is not a valid conference resource: {exc}"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        reason = f"response body is not JSON ({exc.__class__.__name__}): {body[:60]!r}"
    except RecursionError:
        reason = "response body is nested too deeply"
    log.warning(
        "twilio.bad_payload sid=%s url=%s: %s",
        sid or "-",
        url,
        reason,
        extra={"event": "twilio.bad_payload", "sid": sid, "url": url},
    )
    raise BadPayload(reason, url=url, sid=sid)


def _parse_fetched(obj: Any, sid: str | None) -> Conference:
    conference = parse_conference(obj)
    if sid is not None and conference.sid.lower() != sid.lower():
        raise PayloadError(f"field 'sid' is {conference.sid}, expected {sid}", field="sid")
    return conference


def _parse_page(obj: Any, _sid: str | None) -> ConferencePage:
    page = parse_conference_page(obj)
    nxt = page.next_page_uri
    if nxt is not None and nxt != "" and not nxt.startswith("/"):
        # An absolute URL could point our credentials at another host.
        raise PayloadError(f"next_page_uri must be a path, got {nxt!r}", field="next_page_uri")
    return page


def _build_session(
    username: str, password: str, pool_size: int, user_agent: str
) -> requests.Session:
    session = requests.Session()
    session.auth = (username, password)
    session.headers["User-Agent"] = user_agent
    session.headers["Accept"] = "application/json"
    for prefix in ("https://", "http://"):
        adapter = HTTPAdapter(pool_connections=_POOL_HOSTS, pool_maxsize=pool_size, max_retries=0)
        session.mount(prefix, adapter)
    return session


def _pin_environment(session: requests.Session, base_url: str) -> None:
    """Resolve proxy and CA-bundle variables once, for the one host this client uses.

    With `trust_env` on, requests re-reads os.environ on every request, which
    costs about a quarter of the CPU of a fetch at the polling rates we run.
    """
    settings = session.merge_environment_settings(base_url, {}, None, None, None)
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    session.trust_env = False


def _normalise_base_url(url: str) -> str:
    """`scheme://host[:port]` only: paging URIs are host-relative, credentials go in headers."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError("base_url must not carry credentials")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be http(s)://host[:port], got {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"base_url must have no path, query or fragment, got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _check_account(account_sid: str) -> None:
    if not is_account_sid(account_sid):
        raise ValueError(f"malformed account sid {account_sid!r} (expected AC + 32 hex digits)")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
