"""Which nodes a worker may send a project's job to, read with the sync ORM.

The gateway checked at the edge that an eligible node existed (503 before any
money moved); a job may wait in the queue, so the worker asks again when it runs,
under the same rules as a request (nodes.router.eligible and order).
"""
from __future__ import annotations

import time

from . import router
from .models import Node, NodeModel
from .registry import ServedModel, target_for


def job_candidates(*, model: str, allow_non_confidential: bool, region: str = "") -> list[ServedModel]:
    """The eligible nodes serving ``model``, in the order to try them."""
    now = time.time()
    served = [
        ServedModel(
            model=m.model, upstream_model=m.upstream_model, context_window=m.context_window,
            max_output_tokens=m.max_output_tokens, node=target_for(m.node), modalities=frozenset(m.input_modalities),
        )
        for m in NodeModel.objects.filter(model=model, node__status=Node.Status.ACTIVE).select_related("node")
    ]
    eligible = [s for s in served if router.eligible(s, allow_non_confidential=allow_non_confidential, now=now)]
    return router.order(eligible, region=region)
