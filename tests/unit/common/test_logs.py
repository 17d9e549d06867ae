"""JSON log lines, and secrets redacted from every part of a record."""

from __future__ import annotations

import io
import json
import logging

from services.common.logs import JsonFormatter, RedactSecretsFilter, register_secret

SECRET = "s3cr3t-value-never-logged"


def _logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecretsFilter())
    log = logging.getLogger(f"test.logs.{id(stream)}")
    log.handlers = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, stream


def test_log_lines_are_json_with_timestamp_level_message_and_extra() -> None:
    log, stream = _logger()
    log.info("hello %s", "world", extra={"symbol": "BTCUSDT"})
    line = json.loads(stream.getvalue())
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["extra"]["symbol"] == "BTCUSDT"
    assert line["timestamp"].endswith("+00:00")


def test_a_registered_secret_never_appears_in_message_args_extra_or_traceback() -> None:
    register_secret(SECRET)
    log, stream = _logger()
    log.warning("connecting with %s", SECRET, extra={"url": f"redis://:{SECRET}@h:1"})
    try:
        raise RuntimeError(f"auth failed for {SECRET}")
    except RuntimeError:
        log.exception("failed: " + SECRET)
    output = stream.getvalue()
    assert SECRET not in output
    assert output.count("***") >= 4


def test_password_inside_a_registered_url_is_redacted_on_its_own() -> None:
    register_secret("postgresql://cdb:pw-inside-url-123@127.0.0.1:5/cdb")
    log, stream = _logger()
    log.error("password was pw-inside-url-123")
    assert "pw-inside-url-123" not in stream.getvalue()


def test_a_line_with_a_lone_surrogate_from_outside_is_still_one_json_line() -> None:
    log, stream = _logger()
    log.warning("refused %s", "by\ud800", extra={"reason": "x\udcff\u0000"})
    line = json.loads(stream.getvalue())
    assert line["message"] == "refused by\ufffd"
    assert line["extra"]["reason"] == "x\ufffd\ufffd"
