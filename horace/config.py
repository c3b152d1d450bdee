"""Settings: ``HORACE_*`` environment variables, overridable by command-line flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import attrs
from attrs import frozen

from horace.model import Retention

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    pass


def parse_duration(text: str, name: str) -> float:
    """Seconds from ``"30"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"30d"``."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{name}={text!r}: expected a number of seconds or e.g. 15m, 12h, 30d")
    return float(match[1]) * _UNITS[match[2]]


@frozen
class Settings:
    storage_path: Path = Path("./horace-data")
    database_url: str | None = None  # None: SQLite under <root>/.horace/catalog.db
    version_count: int = 5
    version_min_age: float = 0.0
    deleted_retention: float = 30 * 86400.0
    gc_grace: float = 600.0
    lock_wait: float = 30.0
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
    max_message_bytes: int = 4 * 1024 * 1024
    max_connections: int = 256
    max_calls_per_connection: int = 256
    call_deadline: float = 300.0
    shutdown_grace: float = 10.0
    # sinks
    godot_url: str | None = None
    godot_tool: str = "logger_log"
    godot_level: str = "INFO"
    conversations: bool = True
    conversations_url: str | None = None  # None: the catalog's own database
    conversations_to_godot: bool = False
    sink_queue: int = 10_000
    sink_flush: float = 5.0
    sink_backoff_base: float = 1.0  # a sink's first retry delay, doubling up to the cap
    sink_backoff_cap: float = 30.0

    @property
    def catalog_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite://{(self.storage_path / '.horace' / 'catalog.db').absolute()}"

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

        def get(*names: str) -> str | None:
            for name in names:
                if env.get(name):
                    return env[name]
            return None

        def integer(name: str, text: str) -> int:
            try:
                number = int(text)
            except ValueError:
                raise ConfigError(f"{name}={text!r} is not an integer") from None
            if number < 1 and name != "HORACE_MCP_PORT":
                raise ConfigError(f"{name} must be at least 1")
            return number

        def flag(name: str, text: str) -> bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}={text!r}: use on or off")

        if (text := get("HORACE_STORAGE_PATH")) is not None:
            values["storage_path"] = Path(text)
        if (text := get("HORACE_DATABASE_URL")) is not None:
            values["database_url"] = text
        elif (host := get("HORACE_DB_HOST")) is not None:
            user = quote(get("HORACE_DB_USER") or "horace", safe="")
            password = get("HORACE_DB_PASSWORD")
            auth = f"{user}:{quote(password, safe='')}" if password else user
            port = get("HORACE_DB_PORT") or "5432"
            values["database_url"] = f"postgresql://{auth}@{host}:{port}/{get('HORACE_DB_NAME') or 'horace'}"
        for field, names in {
            "version_count": ("HORACE_VERSION_COUNT",),
            "max_message_bytes": ("HORACE_MAX_MESSAGE_BYTES",),
            "max_connections": ("HORACE_MAX_CONNECTIONS",),
            "max_calls_per_connection": ("HORACE_MAX_CALLS_PER_CONNECTION",),
            "port": ("HORACE_MCP_PORT",),
        }.items():
            if (text := get(*names)) is not None:
                values[field] = integer(names[0], text)
        for field, name in {
            "version_min_age": "HORACE_VERSION_MIN_AGE",
            "deleted_retention": "HORACE_DELETED_RETENTION",
            "gc_grace": "HORACE_GC_GRACE",
            "lock_wait": "HORACE_LOCK_WAIT",
            "call_deadline": "HORACE_CALL_DEADLINE",
            "shutdown_grace": "HORACE_SHUTDOWN_GRACE",
            "watch_settle": "HORACE_WATCH_SETTLE",
            "purge_interval": "HORACE_PURGE_INTERVAL",
            "fsck_interval": "HORACE_FSCK_INTERVAL",
        }.items():
            if (text := get(name)) is not None:
                values[field] = parse_duration(text, name)
        text_fields: dict[str, tuple[str, ...]] = {
            "host": ("HORACE_MCP_HOST",),
            "auth_token": ("HORACE_AUTH_TOKEN",),
            "godot_url": ("GODOT_URL", "GODOT_MCP_URL"),
            "godot_tool": ("HORACE_GODOT_TOOL",),
            "godot_level": ("HORACE_GODOT_LEVEL",),
            "conversations_url": ("HORACE_CONVERSATIONS_URL",),
        }
        for field, aliases in text_fields.items():
            if (text := get(*aliases)) is not None:
                values[field] = text
        for field, name in {
            "conversations": "HORACE_CONVERSATIONS",
            "conversations_to_godot": "HORACE_CONVERSATIONS_TO_GODOT",
            "watch": "HORACE_WATCH",
            "watch_poll": "HORACE_WATCH_POLL",
        }.items():
            if (text := get(name)) is not None:
                values[field] = flag(name, text)
        if (text := get("HORACE_SINK_QUEUE")) is not None:
            values["sink_queue"] = integer("HORACE_SINK_QUEUE", text)
        if (text := get("HORACE_SINK_FLUSH")) is not None:
            values["sink_flush"] = parse_duration(text, "HORACE_SINK_FLUSH")
        for field, name in {
            "sink_backoff_base": "HORACE_SINK_BACKOFF_BASE",
            "sink_backoff_cap": "HORACE_SINK_BACKOFF_CAP",
        }.items():
            if (text := get(name)) is not None:
                values[field] = parse_duration(text, name)
        if (text := get("HORACE_ALLOWED_ORIGINS")) is not None:
            values["allowed_origins"] = tuple(o.strip() for o in text.split(",") if o.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return attrs.evolve(cls(), **values)  # type: ignore[arg-type]
