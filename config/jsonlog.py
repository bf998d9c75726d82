"""Production log lines: one JSON object each (python-json-logger), for a log shipper to index.

Fields: time (UTC, ISO 8601), level, logger, message, the process name (PROCESS_NAME), an
exception's traceback when there is one, and whatever a call passed in ``extra`` (the access
log's request_id, route, method, status, latency_ms). Request and response bodies, API keys and
headers are never passed to a logger, so they cannot appear here.
"""
from __future__ import annotations

import datetime as dt

from pythonjsonlogger.json import JsonFormatter as _Base

from .metrics import PROCESS_NAME


class JsonFormatter(_Base):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def add_fields(self, log_data, record, message_dict) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["time"] = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
        log_data["process"] = PROCESS_NAME
