"""Request metadata rows (never bodies: those are encrypted blobs, gateway.vault), written in the
settlement's round trip."""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from config.asyncdb import Stmt


@dataclass(slots=True)
class RequestMeta:
    request_id: str
    organization_id: int
    project_id: int
    api_key_id: int | None
    endpoint: str
    created_at: dt.datetime
    model: str = ""
    node_id: str = ""
    stream: bool = False
    session_id: str = ""
    status_code: int = 200
    error_code: str = ""
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost: int = 0
    price_version: int | None = None
    transfer_id: int | None = None
    latency_ms: int = 0
    ttft_ms: int | None = None
    attempts: int = 0  # nodes tried (failover before the first token); 0 = none was reached
    bodies_kept: bool = False  # the bodies are encrypted blobs (gateway.vault), written after settlement


_COLUMNS = [f.name for f in RequestMeta.__dataclass_fields__.values()]
_INSERT = "INSERT INTO gateway_requestrecord ({cols}) VALUES ({vals})".format(
    cols=", ".join(_COLUMNS), vals=", ".join(f"%({c})s" for c in _COLUMNS)
)


def insert_statement(meta: RequestMeta) -> Stmt:
    return Stmt(_INSERT, asdict(meta))
