"""A node's heartbeat, on the request path of /v1/nodes/{id}/heartbeat: async, one round trip."""
from __future__ import annotations

import asyncio
import datetime as dt

import orjson

from config import asyncdb, bus

from .registry import LOAD_TOPIC, NODES_TOPIC

# Two statements, one round trip: was the node healthy (a change reloads every catalog), then the update.
_SQL = (
    "SELECT id, healthy, status FROM nodes_node WHERE public_id = %(node)s AND operator_id = %(operator)s",
    """UPDATE nodes_node SET load = %(load)s, queue_depth = %(queue_depth)s, models_loaded = %(models_loaded)s,
           last_heartbeat_at = %(now)s, last_health_at = %(now)s, healthy = TRUE, consecutive_failures = 0
       WHERE public_id = %(node)s AND operator_id = %(operator)s""",
)


async def node_heartbeat_record(
    *, node_public_id: str, operator_id: int, load: float, queue_depth: int, models_loaded: list[str], now: dt.datetime
) -> str | None:
    """Store what the node reports and mark it healthy; its status, or None if the operator has no such node.

    Routers hear the load at once (LOAD_TOPIC); a node that comes back reloads the catalogs.
    Raises asyncdb.DatabaseUnavailable.
    """
    params = {
        "node": node_public_id,
        "operator": operator_id,
        "load": load,
        "queue_depth": queue_depth,
        "models_loaded": orjson.dumps(models_loaded).decode(),
        "now": now,
    }
    before, _ = await asyncdb.run(asyncdb.Stmt(_SQL[0], params, fetch=True), asyncdb.Stmt(_SQL[1], params))
    if not before.rows:
        return None
    pk, was_healthy, status = before.rows[0]
    await bus.publish_async(LOAD_TOPIC, f"{pk}:{load}")
    if not was_healthy:  # rare: the node comes back; off the loop, like the publish
        await asyncio.to_thread(_came_back, pk, now)
        await asyncio.to_thread(bus.publish, NODES_TOPIC, node_public_id)
    return status


def _came_back(node_id: int, now: dt.datetime) -> None:
    from django.db import connection

    from .services import node_health_changed

    try:
        node_health_changed(node_id=node_id, healthy=True, reason="heartbeat received", at=now)
    finally:
        connection.close()  # a pool thread: never keep a connection there
