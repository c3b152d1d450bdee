"""Settings: ``HORACE_*`` environment variables, overridable by command-line flags.

One table, :data:`ENVIRONMENT`, says for each setting which variables set it and how
their text is read; :meth:`Settings.from_env` is one loop over it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import idna
from attrs import frozen

from horace.backends import url_problem
from horace.backends.records import Retention
from horace.paths import NoCurrentFolder, absolute_root
from horace.redact import redact_url

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*$")  # ASCII digits only
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    pass


# The longest duration taken (100 years): dates this far from now are still dates, in
# Python and in both catalogs.
MAX_DURATION_DAYS = 36500
# The largest count taken: an integer that both catalogs store (PostgreSQL's integer).
MAX_COUNT = 2**31 - 1


def parse_duration(text: str, name: str) -> float:
    """Seconds from ``"30"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"30d"``."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{name}={text!r}: expected a number of seconds or e.g. 15m, 12h, 30d")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds > MAX_DURATION_DAYS * 86400:
        raise ConfigError(f"{name}={text!r}: must be at most {MAX_DURATION_DAYS}d (100 years)")
    return seconds


def _timeout(text: str, name: str) -> float:
    """A duration that must be more than zero (a zero timeout would close at once)."""
    seconds = parse_duration(text, name)
    if seconds <= 0:
        raise ConfigError(f"{name}={text!r}: must be more than 0")
    return seconds


MAX_SINK_LINGER = 60.0  # seconds a sink may wait to gather a batch


def _linger(text: str, name: str) -> float:
    """How long a sink gathers a batch: at most a minute (what it holds meanwhile is
    what a crash loses)."""
    seconds = parse_duration(text, name)
    if seconds > MAX_SINK_LINGER:
        raise ConfigError(f"{name}={text!r}: must be at most {MAX_SINK_LINGER:g}s")
    return seconds


def _interval(text: str, name: str) -> float:
    """How often a periodic task runs: at least a second (0 would run it without pause)."""
    seconds = parse_duration(text, name)
    if seconds < 1:
        raise ConfigError(f"{name}={text!r}: must be at least 1s")
    return seconds


def _digits(text: str) -> int:
    """A whole number written in ASCII digits alone: int() would take other scripts'
    digits, a sign and underscores too. ValueError otherwise."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(text)
    return int(digits)


def _count(text: str, name: str) -> int:
    try:
        number = _digits(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer") from None
    if not 1 <= number <= MAX_COUNT:
        raise ConfigError(f"{name}={text!r}: must be at least 1 and at most {MAX_COUNT}")
    return number


MIN_PROTOCOL_BYTES = 64 * 1024  # below it, tools/list (48 KB) would no longer fit
# A size as the Configuration table writes it: "4 MiB", "16KiB", "4m", or bytes alone.
_SIZE = re.compile(r"^\s*([0-9]+)\s*(|b|k|kb|kib|m|mb|mib|g|gb|gib)\s*$", re.IGNORECASE)  # ASCII digits
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(text: str, name: str, least: int = 1) -> int:
    """A size in bytes, or with a unit (KiB, MiB, GiB; K, KB and the like are read as
    the same powers of 1024), from *least* up."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{name}={text!r} is not a size: give bytes (4194304) or e.g. 64KiB, 4MiB")
    number = int(match[1]) * _SIZE_UNITS[match[2][:1].lower()]
    if not least <= number <= MAX_COUNT:
        floor = f"{least}" if least == 1 else f"{least} ({least >> 10} KiB)"
        raise ConfigError(f"{name}={text!r}: must be at least {floor} and at most {MAX_COUNT} bytes")
    return number


def _protocol_bytes(text: str, name: str) -> int:
    """A limit on messages or replies: at least MIN_PROTOCOL_BYTES, which the protocol's
    own messages need (a smaller one would refuse initialize or tools/list)."""
    return _bytes(text, name, MIN_PROTOCOL_BYTES)


def _port(text: str, name: str) -> int:
    try:
        number = _digits(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{name}={text!r}: a port is 0 to 65535 (0: any free port)")
    return number


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _switch(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _ON:
        return True
    if lowered in _OFF:
        return False
    raise ConfigError(f"{name}={text!r}: use on or off (or 1/0, true/false, yes/no)")


def _retention(text: str, name: str) -> float | None:
    """A duration, or ``off`` (None: kept for ever)."""
    if text.strip().lower() in ("off", "0", "none", "forever"):
        return None
    seconds = parse_duration(text, name)
    return seconds if seconds > 0 else None


def _text(text: str, name: str) -> str:
    return text


# (TRACE, a level of Godot's entries, is DEBUG here: Horace logs nothing finer.)
LEVEL_NAMES = {
    "TRACE": "DEBUG",
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
}


def _log_level(text: str, name: str) -> str:
    level = LEVEL_NAMES.get(text.strip().upper())
    if level is None:
        raise ConfigError(f"{name}={text!r}: use TRACE, DEBUG, INFO, WARNING or ERROR")
    return level


def websocket_url_problem(url: str) -> str | None:
    """Why *url* names no WebSocket server to connect to, or None."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": a [ without its ]
        return f"the address cannot be read ({exc})"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        return "a WebSocket URL, e.g. ws://godot-mcp:9060"
    try:
        _ = parts.port  # (raises on a port that is no number)
    except ValueError:
        return "the port is not a number"
    try:
        url.encode("utf-8")
        parts.hostname.encode("idna")  # (as the connection will look it up)
    except UnicodeError:
        return "the host is no host name (an empty or over-long label, or not UTF-8)"
    return None


def _websocket_url(text: str, name: str) -> str:
    problem = websocket_url_problem(text)
    if problem is not None:
        raise ConfigError(f"{name}={redact_url(text)!r}: {problem}")
    return text


# What a shell would have expanded, met where none ran (a desktop client's JSON "env", a
# service file): taken as a folder's name, it would make a store under ./~ or ./$HOME.
# A folder that is there by that name is served: it was made so on purpose.
_UNEXPANDED = re.compile(r"^~|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def _path(text: str, name: str) -> Path:
    unexpanded = _UNEXPANDED.search(text)
    if unexpanded is not None and not os.path.lexists(text):
        raise ConfigError(
            f"{name}={text!r} holds {unexpanded[0]!r}, which only a shell expands, and none did "
            "here (a desktop client's configuration, a service file): give the whole path"
        )
    return Path(text)


def _names(text: str, name: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


# What a Host header's name may hold: a DNS name (ASCII: browsers send IDNs as punycode),
# an IPv4 address or an IPv6 one (within brackets, and a zone).
_HOST_NAME = re.compile(r"[a-z0-9._%:-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _hosts(text: str, name: str) -> tuple[str, ...]:
    """Names a request's ``Host`` may give: each a name, with a port or not (``*``: any).
    An entry no Host could ever match (a URL, a path, a space) is refused: it would leave
    every request it was meant to allow refused with 403."""
    entries = _names(text, name)
    for entry in entries:
        if entry != "*" and not _host_part(f"//{entry}"):
            raise ConfigError(
                f"{name}: {entry!r} is not a host name: give the name a request's Host has "
                "(horace.example, or horace.example:8443; an IDN in its xn-- form), without a "
                "scheme or a path"
            )
    return entries


def _origins(text: str, name: str) -> tuple[str, ...]:
    """``Origin``s browsers may connect from: each a scheme, a name and a port or not
    (``*``: any). One no browser sends (no scheme, a path) is refused, as for hosts."""
    entries = _names(text, name)
    for entry in entries:
        scheme, sep, _ = entry.partition("://")
        named = sep and _SCHEME.fullmatch(scheme) and _host_part(entry, ("", "/"))
        if entry != "*" and not named:
            raise ConfigError(
                f"{name}: {entry!r} is not an origin: give it as a browser sends it, a scheme and a "
                "name (https://ops.example, or http://ops.example:8080), without a path"
            )
    return entries


def _host_part(url: str, paths: tuple[str, ...] = ("",)) -> bool:
    """Whether *url* is a name, with a port or not, then one of *paths*, and nothing more."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not one raises)
    except ValueError:
        return False
    if parts.path not in paths or parts.query or parts.fragment or parts.username is not None:
        return False
    return url.isascii() and _HOST_NAME.fullmatch(parts.hostname or "") is not None


def _host(text: str, name: str) -> str:
    """An address to bind: ASCII (an IP address, a host name), or a name Trio can encode
    (IDNA 2008, as it does)."""
    if not text.isascii():
        try:
            idna.encode(text, uts46=True)
        except (idna.IDNAError, UnicodeError):
            raise ConfigError(f"{name}='{text}' is not an IP address or a host name") from None
    return text


def _token(text: str, name: str) -> str:
    """A secret sent in a header (``Authorization: Bearer …``): UTF-8, no control
    characters; else no request could ever carry it, and every one would be refused."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name} is not valid UTF-8: no request could send it") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ConfigError(f"{name} holds a control character: no request could send it in a header")
    return text


def _database_url(text: str, name: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{name}: '{redact_url(text)}' is not valid UTF-8") from None
    problem = url_problem(text)
    if problem is not None:
        raise ConfigError(f"{name}: {problem}")
    return text


Parser = Callable[[str, str], Any]
# The parsers that take a value as it is (the others read a number, a word, a list, and
# ignore the spaces around it): such a value may have none (see _no_surrounding_space).
_TAKEN_AS_GIVEN: frozenset[Parser] = frozenset({_path, _text, _token, _database_url, _websocket_url, _host})
# Flags given as text, checked as their variables are (the others come typed from the CLI).
_CHECKED_FLAGS: dict[str, tuple[Parser, str]] = {
    "database_url": (_database_url, "--database"),
    "host": (_host, "--host"),
}

# setting -> (environment variables, first set wins; how their text is read)
ENVIRONMENT: dict[str, tuple[tuple[str, ...], Parser]] = {
    "storage_path": (("HORACE_STORAGE_PATH",), _path),
    "database_url": (("HORACE_DATABASE_URL",), _database_url),
    "version_count": (("HORACE_VERSION_COUNT",), _count),
    "version_min_age": (("HORACE_VERSION_MIN_AGE",), parse_duration),
    "deleted_retention": (("HORACE_DELETED_RETENTION",), parse_duration),
    "gc_grace": (("HORACE_GC_GRACE",), parse_duration),
    "lock_wait": (("HORACE_LOCK_WAIT",), parse_duration),
    "max_metadata_bytes": (("HORACE_MAX_METADATA_BYTES",), _bytes),
    "watch": (("HORACE_WATCH",), _switch),
    "watch_poll": (("HORACE_WATCH_POLL",), _switch),
    "watch_settle": (("HORACE_WATCH_SETTLE",), parse_duration),
    "purge_interval": (("HORACE_PURGE_INTERVAL",), _interval),
    "fsck_interval": (("HORACE_FSCK_INTERVAL",), _interval),
    "host": (("HORACE_MCP_HOST",), _host),
    "port": (("HORACE_MCP_PORT",), _port),
    "auth_token": (("HORACE_AUTH_TOKEN",), _token),
    "allowed_origins": (("HORACE_ALLOWED_ORIGINS",), _origins),
    "allowed_hosts": (("HORACE_ALLOWED_HOSTS",), _hosts),
    "max_message_bytes": (("HORACE_MAX_MESSAGE_BYTES",), _protocol_bytes),
    "max_connections": (("HORACE_MAX_CONNECTIONS",), _count),
    "max_pending_connections": (("HORACE_MAX_PENDING_CONNECTIONS",), _count),
    "max_calls_per_connection": (("HORACE_MAX_CALLS_PER_CONNECTION",), _count),
    "max_inflight_bytes": (("HORACE_MAX_INFLIGHT_BYTES",), _protocol_bytes),
    "max_batch": (("HORACE_MAX_BATCH",), _count),
    "max_reply_bytes": (("HORACE_MAX_REPLY_BYTES",), _protocol_bytes),
    "max_read_bytes": (("HORACE_MAX_READ_BYTES",), _bytes),
    "max_pending_reply_bytes": (("HORACE_MAX_PENDING_REPLY_BYTES",), _protocol_bytes),
    "max_pending_reply_bytes_total": (("HORACE_MAX_PENDING_REPLY_BYTES_TOTAL",), _protocol_bytes),
    "idle_timeout": (("HORACE_IDLE_TIMEOUT",), _timeout),
    "send_timeout": (("HORACE_SEND_TIMEOUT",), _timeout),
    "call_deadline": (("HORACE_CALL_DEADLINE",), _timeout),
    "shutdown_grace": (("HORACE_SHUTDOWN_GRACE",), parse_duration),
    "godot_url": (("GODOT_URL", "GODOT_MCP_URL"), _websocket_url),
    "godot_tool": (("HORACE_GODOT_TOOL",), _text),
    "godot_level": (("HORACE_GODOT_LEVEL",), _log_level),
    "conversations": (("HORACE_CONVERSATIONS",), _switch),
    "conversations_url": (("HORACE_CONVERSATIONS_URL",), _database_url),
    "conversations_to_godot": (("HORACE_CONVERSATIONS_TO_GODOT",), _switch),
    "turn_max_bytes": (("HORACE_TURN_MAX_BYTES",), _bytes),
    "conversation_retention": (("HORACE_CONVERSATION_RETENTION",), _retention),
    "sink_queue": (("HORACE_SINK_QUEUE",), _count),
    "sink_queue_bytes": (("HORACE_SINK_QUEUE_BYTES",), _bytes),
    "sink_flush": (("HORACE_SINK_FLUSH",), parse_duration),
    "sink_linger": (("HORACE_SINK_LINGER",), _linger),
    "sink_backoff_base": (("HORACE_SINK_BACKOFF_BASE",), _timeout),
    "sink_backoff_cap": (("HORACE_SINK_BACKOFF_CAP",), _timeout),
    "sink_process": (("HORACE_SINK_PROCESS",), _switch),
}


# Read by the repository's own tooling (tests, benchmarks, scripts), not by Horace.
_TOOLING: tuple[str, ...] = (
    "HORACE_TEST_",
    "HORACE_BENCH_",
    "HORACE_FUZZ_",
    "HORACE_PG_",
    "HORACE_CONFORMANCE_",
    "HORACE_INSPECTOR_",
    "HORACE_UPDATE_GOLDEN",
)
_PARTS = ("HORACE_DB_HOST", "HORACE_DB_PORT", "HORACE_DB_NAME", "HORACE_DB_USER", "HORACE_DB_PASSWORD")
# Read by the CLI's options (log_level_from_env), not by Settings.
CLI_VARIABLES = ("HORACE_LOG_LEVEL",)


def log_level_from_env(env: Mapping[str, str]) -> str:
    """``--log-level``'s value when it is not given: ``HORACE_LOG_LEVEL``, or INFO."""
    text = env.get("HORACE_LOG_LEVEL")
    return "INFO" if text is None else _log_level(text, "HORACE_LOG_LEVEL")


KNOWN_VARIABLES = frozenset(
    {name for names, _ in ENVIRONMENT.values() for name in names} | set(_PARTS) | set(CLI_VARIABLES)
)
# Names other tools use for what Horace calls otherwise: what they mean here.
_MEANT = {
    "HORACE_DB_URL": "HORACE_DATABASE_URL",
    "HORACE_DATABASE": "HORACE_DATABASE_URL",
    "HORACE_PORT": "HORACE_MCP_PORT",
    "HORACE_HOST": "HORACE_MCP_HOST",
    "HORACE_TOKEN": "HORACE_AUTH_TOKEN",
    "HORACE_STORAGE": "HORACE_STORAGE_PATH",
}


def ignored_variables(env: Mapping[str, str]) -> list[str]:
    """A line for each ``HORACE_*`` variable that does nothing: one that is no setting (a
    typo, ``HORACE_PORT`` or ``HORACE_AUTH_TOKN``, would otherwise leave the setting it
    meant at its default), or a part of a PostgreSQL URL without ``HORACE_DB_HOST``."""
    lines = []
    if not env.get("HORACE_DB_HOST"):
        lines += [
            f"{name} is read only with HORACE_DB_HOST, which selects PostgreSQL: ignored"
            for name in _PARTS[1:]
            if env.get(name)
        ]
    lines += _inapplicable(env) + _overruled(env)
    unknown = [
        name
        for name in sorted(env)
        if name.startswith("HORACE_") and name not in KNOWN_VARIABLES and not name.startswith(_TOOLING)
    ]
    if not unknown:
        return lines
    import difflib  # (only then: every command reads the environment)

    for name in unknown:
        close = (
            [_MEANT[name]]
            if name in _MEANT
            else difflib.get_close_matches(name, KNOWN_VARIABLES, n=2, cutoff=0.75)
        )
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        lines.append(f"{name} is not a Horace setting{hint}: ignored")
    return lines


def _inapplicable(env: Mapping[str, str]) -> list[str]:
    """A line for each setting of a log sink that is off: set, it would seem to apply."""
    lines = []
    if env.get("HORACE_CONVERSATIONS", "").strip().lower() in _OFF:
        lines += [
            f"{name} is read only with the conversation log on (HORACE_CONVERSATIONS is off): ignored"
            for name in ("HORACE_CONVERSATIONS_URL", "HORACE_CONVERSATION_RETENTION")
            if env.get(name)
        ]
    if not (env.get("GODOT_URL") or env.get("GODOT_MCP_URL")):
        lines += [
            f"{name} is read only with GODOT_URL, which sends the log to Godot: ignored"
            for name in ("HORACE_GODOT_TOOL", "HORACE_GODOT_LEVEL", "HORACE_CONVERSATIONS_TO_GODOT")
            if env.get(name)
        ]
    return lines


_DEFAULT_BACKOFF_CAP = 30.0


def _overruled(env: Mapping[str, str]) -> list[str]:
    """A line for a setting that another overrules: a sink's first retry delay above the
    most it may wait (each retry then waits the cap)."""
    base_text, cap_text = env.get("HORACE_SINK_BACKOFF_BASE"), env.get("HORACE_SINK_BACKOFF_CAP")
    if not base_text:
        return []
    try:
        base = _timeout(base_text, "HORACE_SINK_BACKOFF_BASE")
        cap = _timeout(cap_text, "HORACE_SINK_BACKOFF_CAP") if cap_text else _DEFAULT_BACKOFF_CAP
    except ConfigError:
        return []  # (refused at start, and said so there)
    if base <= cap:
        return []
    return [
        f"HORACE_SINK_BACKOFF_BASE ({base:g} s) is above HORACE_SINK_BACKOFF_CAP ({cap:g} s), the most "
        "a sink waits between retries: each waits the cap"
    ]


@frozen
class Settings:
    storage_path: Path = Path("./horace-data")
    database_url: str | None = None  # None: SQLite under <root>/.horace/catalog.db
    version_count: int = 5
    version_min_age: float = 0.0
    deleted_retention: float = 30 * 86400.0
    gc_grace: float = 600.0
    lock_wait: float = 30.0
    max_metadata_bytes: int = 16 * 1024  # of a file or collection, as JSON
    # watch mode and periodic work
    watch: bool = False
    watch_poll: bool = False
    watch_settle: float = 0.5
    purge_interval: float = 3600.0
    fsck_interval: float = 6 * 3600.0
    # server
    host: str = "127.0.0.1"
    port: int = 8070
    auth_token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names served beside loopback ones ("*": any)
    max_message_bytes: int = 4 * 1024 * 1024
    # sessions, WebSocket (counted from before the handshake) and Streamable HTTP together
    max_connections: int = 256
    # connections not yet a session (HTTP head, /health, handshake under way); more get 503
    max_pending_connections: int = 128
    max_calls_per_connection: int = 256
    # the request messages whose calls are under way on one connection, in bytes
    max_inflight_bytes: int = 8 * 1024 * 1024
    max_batch: int = 100  # requests in one JSON-RPC batch
    max_reply_bytes: int = 8 * 1024 * 1024  # one reply, single or batch
    # one version's content read through MCP (a resource, a diff): base64 makes it 4/3 in a reply
    max_read_bytes: int = 4 * 1024 * 1024
    # replies in the making (large results) or not yet read, per connection
    max_pending_reply_bytes: int = 16 * 1024 * 1024
    # the same, every session together
    max_pending_reply_bytes_total: int = 64 * 1024 * 1024
    # a session (either transport) with nothing from the client and no call running
    idle_timeout: float = 300.0
    # a reply the client does not take in this time closes the connection (HTTP: an answer
    # whose connection was cut is kept this long for a resume)
    send_timeout: float = 30.0
    call_deadline: float = 300.0
    shutdown_grace: float = 10.0
    # sinks
    godot_url: str | None = None
    godot_tool: str = "logger_log"
    godot_level: str = "INFO"
    conversations: bool = True
    conversations_url: str | None = None  # None: the catalog's own database
    conversations_to_godot: bool = False
    turn_max_bytes: int = 64 * 1024  # a turn's content, past which it is cut (conversations.within)
    conversation_retention: float | None = None  # seconds turns are kept (None: for ever)
    sink_queue: int = 10_000
    sink_queue_bytes: int = 32 * 1024 * 1024  # a turn holds a whole request or reply
    sink_flush: float = 5.0
    # How long a sink gathers entries into a batch before it delivers them: one write (and
    # one transaction) for many entries when calls come fast; also what a crash can lose.
    sink_linger: float = 0.05
    sink_backoff_base: float = 1.0  # a sink's first retry delay, doubling up to the cap
    sink_backoff_cap: float = _DEFAULT_BACKOFF_CAP
    # The sinks' work (turns made and stored, entries sent to Godot) in a child process, on
    # another core, rather than beside the sessions (horace.server.sinkprocess).
    sink_process: bool = True

    @property
    def catalog_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite://{self.default_catalog_path}"

    @property
    def default_catalog_path(self) -> Path:
        return (self.storage_path / ".horace" / "catalog.db").absolute()

    @property
    def retention(self) -> Retention:
        return Retention(keep=self.version_count, min_age_seconds=self.version_min_age)

    @property
    def deleted_retention_delta(self) -> timedelta:
        return timedelta(seconds=self.deleted_retention)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read the environment, then apply flag *overrides* (None values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        token = env.get("HORACE_AUTH_TOKEN")
        if token is not None and not token.strip():
            # Set, but to nothing: an operator who meant to require a token (a template's
            # value left empty) would serve everyone without one.
            raise ConfigError(
                f"HORACE_AUTH_TOKEN={token!r}: set but empty: give the token clients must send, or "
                "unset the variable to serve without one"
            )
        for field, (names, parse) in ENVIRONMENT.items():
            name = next((n for n in names if env.get(n)), None)
            if name is not None:
                if parse in _TAKEN_AS_GIVEN:
                    _no_surrounding_space(name, env[name])
                values[field] = parse(env[name], name)
        if "database_url" not in values and env.get("HORACE_DB_HOST"):
            for part in _URL_PARTS[:-1]:  # (a password may begin or end with a space)
                if env.get(part):
                    _no_surrounding_space(part, env[part])
            values["database_url"] = _database_url(_url_from_parts(env), "HORACE_DB_HOST/PORT/NAME/USER")
        for field, value in overrides.items():
            if value is None:
                continue
            checked = _CHECKED_FLAGS.get(field)
            values[field] = value if checked is None else checked[0](str(value), checked[1])
        settings = attrs.evolve(cls(), **values)  # type: ignore[arg-type]
        try:  # (made absolute once: the default catalog's path follows from it)
            return attrs.evolve(settings, storage_path=absolute_root(settings.storage_path))
        except NoCurrentFolder as exc:
            raise ConfigError(str(exc)) from None


_URL_PARTS = ("HORACE_DB_HOST", "HORACE_DB_PORT", "HORACE_DB_NAME", "HORACE_DB_USER", "HORACE_DB_PASSWORD")


def _url_from_parts(env: Mapping[str, str]) -> str:
    """The original's ``HORACE_DB_HOST/PORT/NAME/USER/PASSWORD`` as one URL. A host that is
    a folder (``/run/postgresql``: the server's Unix socket there) goes in the query, as
    libpq takes it; in the URL's place of a host it would be read as the database's name."""
    user = quote(env.get("HORACE_DB_USER") or "horace", safe="")
    password = env.get("HORACE_DB_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host, port = env["HORACE_DB_HOST"], env.get("HORACE_DB_PORT") or "5432"
    database = quote(env.get("HORACE_DB_NAME") or "horace", safe="")
    if host.startswith("/"):
        return f"postgresql://{auth}@/{database}?host={quote(host, safe='/')}&port={quote(port, safe='')}"
    return f"postgresql://{auth}@{host}:{port}/{database}"


def _no_surrounding_space(name: str, text: str) -> None:
    """A value taken as it is (a path, a URL, a token) has no space or newline at its
    start or end: one there is a stray (an environment file's), and taken, it would name
    another store (a folder whose name ends in a space, made anew) or a token no client
    can send (HTTP strips a header's value)."""
    if text != text.strip():
        shown = "" if name == "HORACE_AUTH_TOKEN" else f"={redact_url(text)!r}"
        raise ConfigError(
            f"{name}{shown} has whitespace at its start or end (a stray space or newline in an "
            "environment file?): remove it"
        )
