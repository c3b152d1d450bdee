"""One redactor for everything Horace shows: URLs (their password in the authority or as a
query parameter), free text holding URLs, and log lines."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from horace.logs import JsonLines, OnceAWhile
from horace.redact import MASK, redact_json_text, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://horace:s3cret@db:5432/horace", "s3cret"),
        ("postgresql://horace@db/horace?password=s3cret", "s3cret"),
        ("postgresql://horace@db/horace?sslmode=require&sslpassword=s3cret", "s3cret"),
        ("postgresql://horace@db/horace?sslkey=/keys/s3cret.key", "s3cret"),
        ("postgresql://horace@db/horace?application_name=x&PASSWORD=s3cret", "s3cret"),
        ("ws://user:s3cret@godot:9060/?token=t0ken", "s3cret"),
    ],
)
def test_urls_lose_their_secrets_and_keep_the_rest(url: str, secret: str) -> None:
    shown = redact_url(url)
    assert secret not in shown and "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]
    assert ("db" in shown) or ("godot" in shown)
    assert "t0ken" not in redact_url("ws://godot:9060/?token=t0ken")


def test_urls_without_secrets_are_unchanged() -> None:
    for url in ("sqlite:///var/lib/horace/catalog.db", "postgresql://horace@db/horace?sslmode=require"):
        assert redact_url(url) == url


def test_text_and_log_lines_lose_the_secrets_of_urls_in_them() -> None:
    text = "could not connect to postgresql://h:pw1@db/x?password=pw2 (refused)"
    shown = redact_text(text)
    assert "pw1" not in shown and "pw2" not in shown and "(refused)" in shown
    record = logging.LogRecord("horace", logging.INFO, __file__, 1, "listening, %s", (text,), None)
    record.backend = "postgresql://h@db/x?sslpassword=pw3"
    record.data = {"api_key": "k3y", "fine": "ok"}
    line = JsonLines().format(record)
    for secret in ("pw1", "pw2", "pw3", "k3y"):
        assert secret not in line
    assert json.loads(line)["data"]["fine"] == "ok"


def test_asyncpg_retries_are_logged_in_one_line() -> None:
    """asyncpg's pool logs its retries during an outage with a traceback each: one line."""
    from horace.logs import one_line

    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except OSError:
        exc_info = sys.exc_info()
    message = "Failed to restore the %s"
    record = logging.LogRecord("asyncpg.pool", logging.WARNING, "pool.py", 1, message, ("floor",), exc_info)
    assert one_line(record) and record.exc_info is None
    said = record.getMessage()
    assert said == "Failed to restore the floor: ConnectionRefusedError: [Errno 111] Connect call failed"
    assert "Traceback" not in logging.Formatter().format(record)


def test_trio_s_accept_failures_are_logged_once_a_while_without_their_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Out of open files, trio's accept loop logs each failed accept with its traceback, ten
    times a second: one line in a while, saying how many were left out, instead of a flood."""
    logger = logging.getLogger("tests.accept-loop")
    logger.filters[:] = [OnceAWhile(0.2)]
    with caplog.at_level(logging.ERROR, logger="tests.accept-loop"):
        for _ in range(5):
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.error("accept returned %s; retrying", "EMFILE", exc_info=True)
        time.sleep(0.25)
        logger.error("accept returned %s; retrying", "EMFILE")
    said = [r for r in caplog.records if r.name == "tests.accept-loop"]
    assert [r.getMessage() for r in said] == [
        "accept returned EMFILE; retrying",
        "accept returned EMFILE; retrying (4 more like it left out)",
    ]
    assert said[0].exc_info is None


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("error: Authorization: Bearer abc", "abc"),  # a header after another word and colon
        ("refused (401): www-authenticate: x, Cookie: session=s1", "s1"),
        ("a: b\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\nc: d", "dXNlcjpwdw"),
    ],
)
def test_a_header_anywhere_on_its_line_loses_its_value(text: str, secret: str) -> None:
    shown = redact_text(text)
    assert secret not in shown and MASK in shown, shown
    assert shown.count("\n") == text.count("\n")


def test_turn_text_loses_the_password_of_a_url_though_it_names_no_secret_key() -> None:
    """A conversation turn is parsed for secrets only when its text may hold one: a URL
    with a user in it may (its password), as a secret-sounding key does."""
    turn = json.dumps({"purpose": "loads from postgresql://etl:PW1@db/sales", "path": "a/b.txt"})
    shown = redact_json_text(turn)
    assert "PW1" not in shown and json.loads(shown)["path"] == "a/b.txt"
