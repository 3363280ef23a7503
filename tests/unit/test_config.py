import base64
import copy
import textwrap
from pathlib import Path

import pytest

from monitor.config import (
    ConfigError,
    DatabaseSettings,
    DispatchSettings,
    HttpSettings,
    LoggingSettings,
    NotifierSettings,
    PollingSettings,
    Secret,
    Settings,
    TwilioSettings,
    default_database_url,
    load_settings,
)
from monitor.domain import EVENT_TYPES

SID = "AC" + "0123456789abcdef" * 2
KEY = "SK" + "fedcba9876543210" * 2
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_WHSEC = "whsec_" + base64.b64encode(b"another key of enough bytes").decode()


def write(tmp_path: Path, text: str, name: str = "monitor.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=environ or {})
    return info.value.problems


def credentials(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return folder


# --- defaults and a full file -------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    db_url = f"sqlite:///{tmp_path.resolve() / 'conference-monitor.db'}"
    assert settings == Settings(
        twilio=TwilioSettings(),
        database=DatabaseSettings(url=db_url),
        polling=PollingSettings(),
        dispatch=DispatchSettings(),
        http=HttpSettings(),
        logging=LoggingSettings(),
        notifiers=(),
        source=None,
    )
    assert settings.polling.interval_s == 5.0
    assert settings.twilio.connect_timeout_s == 3.05
    assert settings.dispatch.give_up_after_s == 25 * 3600
    assert settings.twilio.basic_auth() is None
    assert not settings.http.enabled


FULL_FILE = f"""
[twilio]
account_sid = "{SID}"
auth_token = "file-auth-token"
api_key = "{KEY}"
api_secret = "file-api-secret"
edge = "dublin"
region = "ie1"
base_url = "http://127.0.0.1:8080"
connect_timeout = "2s"
read_timeout = "7500ms"
concurrency = 4
max_requests_per_second = 25

[database]
url = "postgresql+psycopg://monitor:pw@db.example/monitor"

[polling]
interval = "2s"
jitter = "250ms"
not_found_grace = 30
use_list = false
discover = true
batch_size = 50

[dispatch]
interval = "500ms"
lease = "2m"
give_up_after = "2d"
batch_size = 10

[http]
listen = "127.0.0.1:9100"

[logging]
format = "json"
level = "debug"

[[notifiers]]
name = "journal"
type = "log"
include_first_seen = true

[[notifiers]]
name = "ops"
type = "webhook"
url = "https://hooks.example/conferences?team=ops"
secret = "{WHSEC}"
events = ["conference.ended", "watch.not_found"]
reasons = ["last-participant-left"]
friendly_names = ["support-*", "sales-?"]
headers = {{ "X-Team" = "ops" }}
timeout = "3s"
"""


def test_full_file_round_trips_into_the_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_FILE)
    settings = load_settings(path, environ={})
    assert settings == Settings(
        twilio=TwilioSettings(
            account_sid=SID,
            auth_token=Secret("file-auth-token"),
            api_key=KEY,
            api_secret=Secret("file-api-secret"),
            edge="dublin",
            region="ie1",
            base_url="http://127.0.0.1:8080",
            connect_timeout_s=2.0,
            read_timeout_s=7.5,
            concurrency=4,
            max_requests_per_second=25.0,
        ),
        database=DatabaseSettings(url="postgresql+psycopg://monitor:pw@db.example/monitor"),
        polling=PollingSettings(
            interval_s=2.0,
            jitter_s=0.25,
            not_found_grace_s=30.0,
            use_list=False,
            discover=True,
            batch_size=50,
        ),
        dispatch=DispatchSettings(
            interval_s=0.5, lease_s=120.0, give_up_after_s=172800.0, batch_size=10
        ),
        http=HttpSettings(listen="127.0.0.1:9100"),
        logging=LoggingSettings(format="json", level="DEBUG"),
        notifiers=(
            NotifierSettings(name="journal", type="log", include_first_seen=True),
            NotifierSettings(
                name="ops",
                type="webhook",
                events=frozenset({"conference.ended", "watch.not_found"}),
                reasons=frozenset({"last-participant-left"}),
                friendly_names=("support-*", "sales-?"),
                url="https://hooks.example/conferences?team=ops",
                secret=Secret(WHSEC),
                headers={"X-Team": "ops"},
                timeout_s=3.0,
            ),
        ),
        source=path,
    )
    assert settings.twilio.basic_auth() == (KEY, "file-api-secret")  # an API key wins
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 9100)
    assert dict(settings.notifiers[1].headers) == {"X-Team": "ops"}


def test_config_path_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[polling]\ninterval = "3s"\n')
    settings = load_settings(environ={"CONFERENCE_MONITOR_CONFIG": str(path)})
    assert settings.polling.interval_s == 3.0
    assert settings.source == path


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL_FILE), environ={})
    with pytest.raises(AttributeError):
        settings.polling.interval_s = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.notifiers[1].headers["X-Team"] = "dev"  # type: ignore[index]


# --- environment overrides ----------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "read", "expected"),
    [
        ("POLLING_INTERVAL", "2s", lambda s: s.polling.interval_s, 2.0),
        ("POLLING_NOT_FOUND_GRACE", "1m", lambda s: s.polling.not_found_grace_s, 60.0),
        ("DISPATCH_GIVE_UP_AFTER", "3d", lambda s: s.dispatch.give_up_after_s, 3 * 86400.0),
        ("TWILIO_CONCURRENCY", "8", lambda s: s.twilio.concurrency, 8),
        ("TWILIO_MAX_REQUESTS_PER_SECOND", "2.5", lambda s: s.twilio.max_requests_per_second, 2.5),
        ("POLLING_DISCOVER", "yes", lambda s: s.polling.discover, True),
        ("POLLING_DISCOVER", "TRUE", lambda s: s.polling.discover, True),
        ("POLLING_USE_LIST", "0", lambda s: s.polling.use_list, False),
        ("POLLING_USE_LIST", "no", lambda s: s.polling.use_list, False),
        ("DATABASE_URL", "sqlite:////srv/m.db", lambda s: s.database.url, "sqlite:////srv/m.db"),
        ("HTTP_LISTEN", "0.0.0.0:9000", lambda s: s.http.listen, "0.0.0.0:9000"),
        ("HTTP_LISTEN", "", lambda s: s.http.listen, None),
        ("LOGGING_FORMAT", "json", lambda s: s.logging.format, "json"),
        ("TWILIO_EDGE", "", lambda s: s.twilio.edge, None),
        ("TWILIO_REQUEST_DEADLINE", "1500ms", lambda s: s.twilio.request_deadline_s, 1.5),
    ],
)
def test_environment_overrides_each_type(
    tmp_path: Path, variable: str, text: str, read: object, expected: object
) -> None:
    path = write(
        tmp_path,
        """
        [polling]
        interval = "10s"
        discover = false
        [http]
        listen = "127.0.0.1:8000"
        """,
    )
    settings = load_settings(path, environ={f"CONFERENCE_MONITOR_{variable}": text})
    assert read(settings) == expected  # type: ignore[operator]


def test_environment_override_of_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, f'[twilio]\naccount_sid = "{SID}"\nauth_token = "from-file"\n')
    env = {"CONFERENCE_MONITOR_TWILIO_AUTH_TOKEN": "from-override"}
    settings = load_settings(path, environ=env)
    assert settings.twilio.auth_token == Secret("from-override")


@pytest.mark.parametrize(
    ("variable", "text", "fragment"),
    [
        ("POLLING_DISCOVER", "maybe", "polling.discover: expected true/false/1/0/yes/no"),
        ("TWILIO_CONCURRENCY", "many", "twilio.concurrency: expected an integer"),
        ("POLLING_INTERVAL", "5 minutes", "polling.interval: invalid duration '5 minutes'"),
        ("TWILIO_MAX_REQUESTS_PER_SECOND", "nan", "expected a finite number"),
        ("TWILIO_CONCURRENCY", "0", "twilio.concurrency: must be between 1 and 100"),
    ],
)
def test_bad_override_values_name_the_variable(variable: str, text: str, fragment: str) -> None:
    [problem] = problems_of(None, {f"CONFERENCE_MONITOR_{variable}": text})
    assert problem.startswith(f"CONFERENCE_MONITOR_{variable}: ")
    assert fragment in problem


def test_unknown_overrides_are_problems_naming_the_variable() -> None:
    env = {
        "CONFERENCE_MONITOR_POLLING_INTERVL": "2s",
        "CONFERENCE_MONITOR_BOGUS": "1",
        "CONFERENCE_MONITOR_NOTIFIERS_URL": "https://x.example",
        "CONFERENCE_MONITOR_TEST_PG_URL": "postgresql://ignored",  # the test suite's own
        "CONFERENCE_MONITOR_CONFIG": "",  # the file's path, not a setting
    }
    problems = problems_of(None, env)
    assert sorted(problems) == sorted(
        [
            "CONFERENCE_MONITOR_POLLING_INTERVL: unknown setting; "
            "did you mean 'CONFERENCE_MONITOR_POLLING_INTERVAL'?",
            "CONFERENCE_MONITOR_BOGUS: unknown setting",
            "CONFERENCE_MONITOR_NOTIFIERS_URL: notifiers can only be set in the file",
        ]
    )


# --- credentials --------------------------------------------------------------


def test_twilio_credentials_from_the_environment() -> None:
    env = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "env-token"}
    assert load_settings(environ=env).twilio.basic_auth() == (SID, "env-token")
    env |= {"TWILIO_API_KEY": KEY, "TWILIO_API_SECRET": "env-api-secret"}
    twilio = load_settings(environ=env).twilio
    assert twilio.basic_auth() == (KEY, "env-api-secret")
    assert twilio.account_sid == SID


def test_empty_twilio_variables_count_as_unset() -> None:
    env = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "t", "TWILIO_API_KEY": ""}
    assert load_settings(environ=env).twilio.api_key is None


def test_twilio_credentials_from_the_credentials_directory(tmp_path: Path) -> None:
    folder = credentials(
        tmp_path,
        TWILIO_ACCOUNT_SID=SID + "\n",
        TWILIO_AUTH_TOKEN="cred-token\n",
        TWILIO_API_KEY=KEY + "\n",
        TWILIO_API_SECRET="cred-api-secret\r\n",
    )
    twilio = load_settings(environ={"CREDENTIALS_DIRECTORY": str(folder)}).twilio
    assert twilio.account_sid == SID
    assert twilio.auth_token == Secret("cred-token")
    assert twilio.api_key == KEY
    assert twilio.api_secret == Secret("cred-api-secret")


@pytest.mark.parametrize(
    ("layers", "winner"),
    [
        (("file",), "from-file"),
        (("file", "credentials"), "from-credentials"),
        (("file", "credentials", "twilio_env"), "from-twilio-env"),
        (("file", "credentials", "twilio_env", "override"), "from-override"),
        (("file", "override"), "from-override"),
        (("credentials", "twilio_env"), "from-twilio-env"),
    ],
)
def test_credential_precedence(tmp_path: Path, layers: tuple[str, ...], winner: str) -> None:
    path = write(tmp_path, f'[twilio]\naccount_sid = "{SID}"\n')
    if "file" in layers:
        path = write(tmp_path, f'[twilio]\naccount_sid = "{SID}"\nauth_token = "from-file"\n')
    env = {}
    if "credentials" in layers:
        folder = credentials(tmp_path, TWILIO_AUTH_TOKEN="from-credentials\n")
        env["CREDENTIALS_DIRECTORY"] = str(folder)
    if "twilio_env" in layers:
        env["TWILIO_AUTH_TOKEN"] = "from-twilio-env"
    if "override" in layers:
        env["CONFERENCE_MONITOR_TWILIO_AUTH_TOKEN"] = "from-override"
    assert load_settings(path, environ=env).twilio.basic_auth() == (SID, winner)


def test_credential_problems_name_where_the_value_came_from(tmp_path: Path) -> None:
    folder = credentials(tmp_path, TWILIO_ACCOUNT_SID="ACnot-a-sid\n")
    env = {"CREDENTIALS_DIRECTORY": str(folder), "TWILIO_API_KEY": KEY}
    problems = problems_of(None, env)
    assert problems == [
        f"{folder / 'TWILIO_ACCOUNT_SID'}: twilio.account_sid: "
        "must be 'AC' followed by 32 hex digits",
        "TWILIO_API_KEY: twilio.api_key: needs twilio.api_secret too: an API key is a pair",
    ]


# --- reporting every problem, with lines ---------------------------------------

BROKEN = [
    "[twilio]",  # 1
    'account_sid = "AC123"',  # 2
    'api_key = "SKnope"',  # 3
    'edge = "Dublin"',  # 4
    'base_url = "https://api.example/v1"',  # 5
    "concurency = 3",  # 6
    "concurrency = 101",  # 7
    "",  # 8
    "[polling]",  # 9
    'interval = "50ms"',  # 10
    'jitter = "1s"',  # 11
    'discover = "yes"',  # 12
    'not_found_grace = "ten seconds"',  # 13
    "",  # 14
    "[databse]",  # 15
    'url = "sqlite://"',  # 16
    "",  # 17
    "[database]",  # 18
    'url = "not a url"',  # 19
    "",  # 20
    "[logging]",  # 21
    'format = "xml"',  # 22
    'level = "loud"',  # 23
    "",  # 24
    "[http]",  # 25
    'listen = "8080"',  # 26
    "",  # 27
    "[dispatch]",  # 28
    'interval = "10ms"',  # 29
]


def test_a_broken_file_reports_every_problem_with_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(BROKEN) + "\n")
    problems = problems_of(path)
    expected = {
        (2, "twilio.account_sid", "must be 'AC' followed by 32 hex digits"),
        (3, "twilio.api_key", "must be 'SK' followed by 32 hex digits"),
        (3, "twilio.api_key", "needs twilio.api_secret too"),
        (4, "twilio.edge", "must be lower-case letters, digits and '-'"),
        (5, "twilio.base_url", "must be just http(s)://host[:port]"),
        (6, "twilio.concurency", "unknown key; did you mean 'concurrency'?"),
        (7, "twilio.concurrency", "must be between 1 and 100 (got 101)"),
        (10, "polling.interval", "must be at least 100ms (got 50ms)"),
        (11, "polling.jitter", "jitter must be less than interval (1s >= 50ms)"),
        (12, "polling.discover", "expected true or false, got string"),
        (13, "polling.not_found_grace", "invalid duration 'ten seconds'"),
        (15, "databse", "unknown section; did you mean 'database'?"),
        (19, "database.url", "is not a valid SQLAlchemy URL"),
        (22, "logging.format", "must be 'plain' or 'json'"),
        (23, "logging.level", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        (26, "http.listen", "expected host:port"),
        (29, "dispatch.interval", "must be at least 100ms"),
    }
    for line, label, fragment in expected:
        prefix = f"{path}:{line}: {label}: "
        assert any(p.startswith(prefix) and fragment in p for p in problems), (prefix, fragment)
    assert len(problems) == len(expected)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('[twilio]\nconcurrency = "4"', "twilio.concurrency: expected an integer, got string"),
        ("[twilio]\nconcurrency = 4.5", "twilio.concurrency: expected an integer, got 4.5"),
        ("[twilio]\nmax_requests_per_second = true", "expected a number, got boolean"),
        ("[twilio]\nbase_url = 5", "twilio.base_url: expected a string, got integer"),
        ("[polling]\nuse_list = 1", "polling.use_list: expected true or false, got integer"),
        ("[polling]\ninterval = true", "polling.interval: expected a duration such as '5s'"),
        ("[polling]\ninterval = [5]", "polling.interval: expected a duration such as '5s'"),
        ("[polling]\ninterval = -5", "polling.interval: invalid duration -5"),
        ("[http]\nlisten = 8080", "http.listen: expected a string, got integer"),
        ("[database]\nurl = 2024-01-01", "database.url: expected a string, got date/time"),
    ],
)
def test_wrong_types_in_the_file(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, line + "\n")
    [found] = problems_of(path)
    assert found.startswith(f"{path}:2: ") and problem in found


@pytest.mark.parametrize(
    ("twilio", "problem"),
    [
        (
            f'account_sid = "{SID}"',
            "twilio.account_sid: needs twilio.auth_token, or twilio.api_key",
        ),
        ('auth_token = "t"', "twilio.auth_token: needs twilio.account_sid"),
        (
            f'account_sid = "{SID}"\napi_secret = "s"',
            "twilio.api_secret: needs twilio.api_key too: an API key is a pair",
        ),
        (
            f'account_sid = "{SID}"\nauth_token = "t"\nregion = "de1"',
            "twilio.region: Twilio region 'de1' needs an edge too",
        ),
        (
            f'account_sid = "{SID}"\nauth_token = "t"\nedge = "dublin"\nregion = "IE 1"',
            "twilio.region: must be lower-case letters, digits and '-'",
        ),
        ('base_url = "ftp://api.example"', "twilio.base_url: must be an http:// or https:// URL"),
        ('base_url = "http://[::1"', "twilio.base_url: is not a valid URL"),
        ('connect_timeout = "0s"', "twilio.connect_timeout: must be more than 0"),
        ('request_deadline = "0s"', "twilio.request_deadline: must be more than 0"),
        ('request_deadline = "soon"', "twilio.request_deadline: invalid duration 'soon'"),
        ("concurrency = 0", "twilio.concurrency: must be between 1 and 100 (got 0)"),
        ("max_requests_per_second = -1", "twilio.max_requests_per_second: must be 0"),
    ],
)
def test_twilio_rules(tmp_path: Path, twilio: str, problem: str) -> None:
    path = write(tmp_path, f"[twilio]\n{twilio}\n")
    [found] = problems_of(path)
    assert found.startswith(f"{path}:") and problem in found


def test_config_error_lists_one_problem_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join(BROKEN) + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value).splitlines() == info.value.problems


def test_lines_are_found_for_dotted_keys_and_past_multiline_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '''
        polling.interval = "1ms"
        [logging]
        level = """
        format = "not this line"
        """
        format = "xml"
        ''',
    )
    problems = problems_of(path)
    assert f"{path}:1: polling.interval: must be at least 100ms (got 1ms)" in problems
    assert any(p.startswith(f"{path}:6: logging.format: ") for p in problems)


def test_top_level_shape_problems(tmp_path: Path) -> None:
    path = write(tmp_path, 'polling = 5\nnotifiers = "all"\n[twilio.extra]\nx = 1\n')
    assert problems_of(path) == [
        f"{path}:1: polling: must be a table ([polling])",
        f"{path}:2: notifiers: must be an array of tables ([[notifiers]])",
        f"{path}:3: twilio.extra: unknown key",
    ]


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[polling]\ninterval = "5s"\njitter = = 1\n')
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:3:")
    assert "invalid TOML" in problem


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert problems_of(missing) == [f"{missing}: configuration file not found"]
    env = {"CONFERENCE_MONITOR_CONFIG": str(missing)}
    [problem] = problems_of(None, env)
    assert problem.startswith(f"{missing}: configuration file not found")
    assert "CONFERENCE_MONITOR_CONFIG" in problem


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path)  # a directory
    assert problem.startswith(f"{tmp_path}: cannot read configuration file")


# --- notifiers ------------------------------------------------------------------


def notifier_problems(
    tmp_path: Path, body: str, environ: dict[str, str] | None = None
) -> list[str]:
    path = write(tmp_path, "[[notifiers]]\n" + textwrap.dedent(body).lstrip("\n"))
    return [p.removeprefix(f"{path}:") for p in problems_of(path, environ)]


WEBHOOK = f'name = "hook"\ntype = "webhook"\nurl = "https://h.example/x"\nsecret = "{WHSEC}"\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('type = "log"\n', "1: notifiers[0].name: missing"),
        ('name = ""\ntype = "log"\n', "2: notifiers[0].name: must not be empty"),
        (
            'name = "x"\n',
            "1: notifiers[0].type: missing: one of log, webhook, slack, msteams, pagerduty, email",
        ),
        ('name = "x"\ntype = "sms"\n', "3: notifiers[0].type: must be one of log, webhook,"),
        (f'name = "x"\ntype = "webhook"\nsecret = "{WHSEC}"\n', "1: notifiers[0].url: missing"),
        (
            WEBHOOK.replace("https://h.example/x", "ftp://h.example/x"),
            "4: notifiers[0].url: must be an http:// or https:// URL",
        ),
        (
            WEBHOOK.replace(WHSEC, "s3cr3t-without-prefix"),
            "5: notifiers[0].secret: the signing secret must start with 'whsec_'",
        ),
        (
            WEBHOOK.replace(WHSEC, "whsec_not*base64!"),
            "5: notifiers[0].secret: the signing secret is not valid base64",
        ),
        (
            WEBHOOK.replace(WHSEC, "whsec_"),
            "5: notifiers[0].secret: the signing secret is empty after 'whsec_'",
        ),
        (
            WEBHOOK + 'secret_env = "HOOK_SECRET"\n',
            "6: notifiers[0].secret_env: give only one of secret, secret_env, secret_credential",
        ),
        (
            WEBHOOK.replace(f'secret = "{WHSEC}"', 'secret_env = "UNSET_VARIABLE"'),
            "5: notifiers[0].secret_env: environment variable 'UNSET_VARIABLE' is not set",
        ),
        (
            WEBHOOK.replace(f'secret = "{WHSEC}"', 'secret_credential = "hook"'),
            "5: notifiers[0].secret_credential: credential 'hook' needs $CREDENTIALS_DIRECTORY",
        ),
        (
            WEBHOOK.replace(f'secret = "{WHSEC}"\n', ""),
            "1: notifiers[0].secret: missing: unsigned webhooks cannot be trusted",
        ),
        (
            WEBHOOK + 'events = ["conference.started", "conference.begun"]\n',
            "6: notifiers[0].events: unknown event type 'conference.begun'; valid: "
            + ", ".join(EVENT_TYPES),
        ),
        (WEBHOOK + "events = []\n", "6: notifiers[0].events: is empty"),
        (
            WEBHOOK + 'reasons = ["hung-up"]\n',
            "6: notifiers[0].reasons: unknown end reason 'hung-up'",
        ),
        (
            WEBHOOK + "headers = { X-Count = 1 }\n",
            "6: notifiers[0].headers: expected a table of strings",
        ),
        (WEBHOOK + 'headers = "X-Team: ops"\n', "6: notifiers[0].headers: expected a table"),
        (
            WEBHOOK + 'headers = { webhook-id = "mine" }\n',
            "6: notifiers[0].headers: 'webhook-id' is set by the signature",
        ),
        (WEBHOOK + 'timeout = "0s"\n', "6: notifiers[0].timeout: must be more than 0"),
        (WEBHOOK + 'timeout = "-5s"\n', "6: notifiers[0].timeout: invalid duration '-5s'"),
        (
            WEBHOOK + 'timout = "5s"\n',
            "6: notifiers[0].timout: unknown key; did you mean 'timeout'?",
        ),
        (
            WEBHOOK + "friendly_names = [1]\n",
            "6: notifiers[0].friendly_names: expected an array of strings",
        ),
        (
            'name = "log"\ntype = "log"\nurl = "https://h.example"\n',
            "4: notifiers[0].url: only applies to webhook, slack, msteams, pagerduty notifiers",
        ),
    ],
)
def test_each_notifier_problem(tmp_path: Path, body: str, expected: str) -> None:
    problems = notifier_problems(tmp_path, body)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_duplicate_notifier_names(tmp_path: Path) -> None:
    others = '[[notifiers]]\nname = "journal"\ntype = "log"\n\n'
    others += '[[notifiers]]\nname = "hook"\ntype = "log"\n'
    body = f"{WEBHOOK}\n{others}"
    assert notifier_problems(tmp_path, body) == [
        "12: notifiers[2].name: duplicate name 'hook' (also notifiers[0])"
    ]


def test_secret_credential_must_exist_in_the_credentials_directory(tmp_path: Path) -> None:
    folder = credentials(tmp_path, other="x")
    body = WEBHOOK.replace(f'secret = "{WHSEC}"', 'secret_credential = "hook"')
    [problem] = notifier_problems(tmp_path, body, {"CREDENTIALS_DIRECTORY": str(folder)})
    assert problem == (
        f"5: notifiers[0].secret_credential: credential file '{folder / 'hook'}' does not exist"
    )


def test_webhook_secret_from_env_and_from_a_credential(tmp_path: Path) -> None:
    folder = credentials(tmp_path, hook=OTHER_WHSEC + "\n")
    path = write(
        tmp_path,
        """
        [[notifiers]]
        name = "a"
        type = "webhook"
        url = "https://a.example/hook"
        secret_env = "HOOK_A_SECRET"

        [[notifiers]]
        name = "b"
        type = "webhook"
        url = "http://127.0.0.1:9999/"
        secret_credential = "hook"
        """,
    )
    env = {"HOOK_A_SECRET": WHSEC, "CREDENTIALS_DIRECTORY": str(folder)}
    a, b = load_settings(path, environ=env).notifiers
    assert (a.secret, b.secret) == (Secret(WHSEC), Secret(OTHER_WHSEC))
    assert a.events is None and a.reasons is None and a.friendly_names == ()


# --- secrets never shown ----------------------------------------------------------

SECRETS = ["file-auth-token", "cred-api-secret", "env-secret-value", "whsec_c2VjcmV0LWtleQ=="]


def test_secret_hides_its_value() -> None:
    secret = Secret("hunter2")
    assert str(secret) == repr(secret) == f"{secret}" == "********"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") != Secret("hunter3")
    assert len({Secret("a"), Secret("a")}) == 1
    with pytest.raises(AttributeError):
        secret._value = "x"
    assert copy.deepcopy(secret) == secret


def test_settings_can_be_copied(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL_FILE), environ={})
    assert copy.deepcopy(settings) == settings


def test_secrets_never_appear_in_settings_repr(tmp_path: Path) -> None:
    folder = credentials(tmp_path, TWILIO_API_SECRET="cred-api-secret\n")
    path = write(
        tmp_path,
        f"""
        [twilio]
        account_sid = "{SID}"
        auth_token = "file-auth-token"
        api_key = "{KEY}"
        [database]
        url = "postgresql://monitor:db-password-value@db.example/monitor"
        [[notifiers]]
        name = "hook"
        type = "webhook"
        url = "https://h.example/"
        secret = "whsec_c2VjcmV0LWtleQ=="
        headers = {{ Authorization = "Bearer env-secret-value" }}
        """,
    )
    settings = load_settings(path, environ={"CREDENTIALS_DIRECTORY": str(folder)})
    shown = repr(settings) + str(settings)
    for secret in [*SECRETS, "db-password-value"]:
        assert secret not in shown
    assert settings.database.url.endswith("db-password-value@db.example/monitor")
    assert settings.twilio.basic_auth() == (KEY, "cred-api-secret")


def test_secrets_never_appear_in_config_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [twilio]
        account_sid = "file-auth-token"
        auth_tokn = "file-auth-token"
        api_secret = "cred-api-secret"
        base_url = "https://user:env-secret-value@api.example"
        [database]
        url = "postgresql://u:env-secret-value@host:notaport/db"
        [[notifiers]]
        name = "hook"
        type = "webhook"
        url = "https://env-secret-value@h.example/"
        secret = "env-secret-value"
        [[notifiers]]
        name = "hook2"
        type = "webhook"
        url = "https://h.example/"
        secret_env = "HOOK_SECRET"
        headers = { "Bad Header" = "env-secret-value" }
        """,
    )
    env = {
        "HOOK_SECRET": "whsec_env-secret-value",
        "CONFERENCE_MONITOR_TWILIO_AUTH_TOKN": "env-secret-value",
        "CONFERENCE_MONITOR_TWILIO_API_KEY": "env-secret-value",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=env)
    shown = str(info.value) + repr(info.value) + repr(info.value.problems)
    assert len(info.value.problems) >= 8
    for secret in SECRETS:
        assert secret not in shown


def test_database_settings_repr_masks_the_password() -> None:
    database = DatabaseSettings(url="postgresql+psycopg://monitor:pw-123@db/monitor")
    assert "pw-123" not in repr(database)
    assert "monitor:***@db" in repr(database)


# --- default database, http address ----------------------------------------------


def test_state_directory_drives_the_default_database_url(tmp_path: Path) -> None:
    expected = f"sqlite:///{tmp_path / 'conference-monitor.db'}"
    assert default_database_url({"STATE_DIRECTORY": str(tmp_path)}) == expected
    settings = load_settings(environ={"STATE_DIRECTORY": f"{tmp_path}:/var/lib/other"})
    assert settings.database.url == expected
    assert expected.startswith("sqlite:////")  # absolute


def test_default_database_url_falls_back_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = default_database_url({})
    assert url == f"sqlite:///{tmp_path.resolve() / 'conference-monitor.db'}"


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("[::1]:9000", "::1", 9000),
        ("localhost:0", "localhost", 0),
    ],
)
def test_http_listen_address(listen: str, host: str, port: int) -> None:
    http = load_settings(environ={"CONFERENCE_MONITOR_HTTP_LISTEN": listen}).http
    assert (http.enabled, http.host, http.port) == (True, host, port)


def test_http_host_without_listen_is_an_error() -> None:
    with pytest.raises(ValueError, match="http.listen is not set"):
        _ = HttpSettings().host


@pytest.mark.parametrize("listen", ["8080", ":8080", "host:", "host:99999", "host:http"])
def test_bad_http_listen(listen: str) -> None:
    [problem] = problems_of(None, {"CONFERENCE_MONITOR_HTTP_LISTEN": listen})
    assert "http.listen: expected host:port" in problem


# --- TWILIO_EDGE / TWILIO_REGION, as the Twilio SDK reads them -------------------


def test_request_deadline_defaults_to_four_seconds() -> None:
    assert load_settings(None, environ={}).twilio.request_deadline_s == 4.0


@pytest.mark.parametrize(
    ("file", "env", "expected"),
    [
        ("", {"TWILIO_EDGE": "sydney", "TWILIO_REGION": "au1"}, ("sydney", "au1")),
        ("", {"TWILIO_EDGE": "dublin"}, ("dublin", None)),  # region us1 implied, as the SDK does
        ("", {"TWILIO_REGION": "ie1"}, (None, "ie1")),  # its default edge, dublin
        (
            'edge = "dublin"\nregion = "ie1"',
            {"TWILIO_EDGE": "x", "TWILIO_REGION": "y"},
            ("dublin", "ie1"),
        ),
        ('region = "ie1"', {"TWILIO_EDGE": "dublin"}, ("dublin", "ie1")),  # each key on its own
        ("", {"TWILIO_EDGE": "", "TWILIO_REGION": ""}, (None, None)),
    ],
)
def test_twilio_edge_and_region_variables_fill_what_the_file_leaves_out(
    tmp_path: Path, file: str, env: dict[str, str], expected: tuple[str | None, str | None]
) -> None:
    path = write(tmp_path, f"[twilio]\n{file}\n")
    twilio = load_settings(path, environ=env).twilio
    assert (twilio.edge, twilio.region) == expected


def test_a_config_override_beats_twilio_edge() -> None:
    env = {"TWILIO_EDGE": "dublin", "CONFERENCE_MONITOR_TWILIO_EDGE": "sydney"}
    assert load_settings(None, environ=env).twilio.edge == "sydney"


def test_a_bad_twilio_region_variable_is_named() -> None:
    [problem] = problems_of(None, {"TWILIO_REGION": "de1"})
    assert problem.startswith("TWILIO_REGION: twilio.region: Twilio region 'de1' needs an edge")
    load_settings(None, environ={"TWILIO_REGION": "de1", "TWILIO_EDGE": "frankfurt"})
