"""The operator's JSON log lines."""

from __future__ import annotations

import json
import logging

from cdb_operator.logs import OperatorJsonFormatter, RoutineFilter

from services.common.logs import register_secret


def record(name: str, msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_a_line_is_json_without_kopfs_settings_and_with_the_object_reference() -> None:
    rec = record("kopf.objects", "reconciled", settings=object(), k8s_skip=False,
                 k8s_ref={"name": "cdb", "namespace": "trading"})
    line = json.loads(OperatorJsonFormatter().format(rec))
    assert line["message"] == "reconciled" and line["level"] == "INFO"
    assert line["extra"] == {"k8s_ref": {"name": "cdb", "namespace": "trading"}}
    assert hasattr(rec, "settings")  # the original record is untouched


def test_the_admin_token_never_reaches_a_line() -> None:
    register_secret("operator-log-token-123")
    rec = record("cdb.operator", "token is operator-log-token-123")
    assert "operator-log-token-123" not in OperatorJsonFormatter().format(rec)


def test_routine_timer_successes_are_dropped() -> None:
    keep = RoutineFilter()
    assert not keep.filter(record("kopf.objects", "Timer 'observe' succeeded."))
    assert keep.filter(record("kopf.objects", "Handler 'release' succeeded."))
    assert keep.filter(record("cdb.operator", "Timer 'observe' succeeded."))
