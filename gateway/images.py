"""POST /v1/images/generations (and /v1/images): images as metered Celery jobs.

The model must be an image model (its price version has per-image prices by
size). n × the size's price is reserved before the job is queued; the worker
asks a node for base64 PNGs (never links: a node's URL would be readable by
anyone), settles for the images it actually got (fewer → billed fewer, none →
voided), and keeps them sealed with the job.

The HTTP call waits for the job (up to IMAGES_WAIT_SECONDS, polling without
blocking the event loop) and answers OpenAI's ImagesResponse, so
``client.images.generate`` works unchanged; ``X-Job-ID`` names the job. With
``Prefer: respond-async`` (RFC 7240) it answers 202 with the job at once (a
body field would clash with OpenAI's own ``background`` parameter, which means a
transparent background). ``response_format: "url"`` gives links to
``GET /v1/images/{job_id}/{index}``, which needs the project's secret key:
another tenant's key gets 404, and no link works without a key.
"""
from __future__ import annotations

import base64
import binascii
import logging
import time
from typing import Annotated, Literal

import orjson
from django.conf import settings
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from billing.pricing import Usage
from nodes import jobs, paidjobs
from nodes.adapters import NodeError, adapter_for
from nodes.jobrouting import job_candidates
from nodes.models import Job

from . import limits, paidjobs as gw_jobs
from .catalog import catalog
from .context import ApiRequest, json_response
from .errors import GatewayError
from .paid import PaidRequest
from .pipeline import candidates_for, first_node, node_info
from .schemas import parse_json, validate

log = logging.getLogger(__name__)
ENDPOINT = "images.generations"
SIZES = ("512x512", "1024x1024", "1024x1792")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Field(min_length=1, max_length=4000)]
    model: Annotated[str, Field(min_length=1, max_length=200)]
    n: Annotated[int, Field(ge=1, le=4)] = 1
    size: Literal["512x512", "1024x1024", "1024x1792"] = "1024x1024"
    response_format: Literal["b64_json", "url"] = "b64_json"
    user: Annotated[str, Field(max_length=256)] | None = None  # accepted for compatibility; not used


def respond_async(headers) -> bool:
    return any(p.strip().lower() == "respond-async" for p in headers.get("prefer", "").split(","))


def _job_response(req: ApiRequest, job: Job, *, status: int) -> Response:
    headers = {"x-job-id": job.public_id, "location": f"/v1/jobs/{job.public_id}"}
    return json_response(req, orjson.dumps(jobs.job_object(job, include_result=False)), status=status, headers=headers)


def images_body(job: Job, base_url: str) -> dict:
    """OpenAI's ImagesResponse for a finished job (also its ``result`` at GET /v1/jobs/{id})."""
    result = jobs.job_result(job=job)
    if job.params.get("response_format") == "url":
        data = [{"url": f"{base_url}/v1/images/{job.public_id}/{i}"} for i in range(len(result["images"]))]
    else:
        data = [{"b64_json": image} for image in result["images"]]
    body = {"created": result["created"], "data": data, "size": job.params["size"],
            "output_format": "png", "billing": {"images": len(data), "cost_micros": result["cost"]}}
    if result.get("node"):
        body["node"] = result["node"]
    return body


def images_response(req: ApiRequest, job: Job) -> Response:
    body = images_body(job, str(req.request.base_url).rstrip("/"))
    return json_response(req, orjson.dumps(body), headers={"x-job-id": job.public_id})


async def create_image(req: ApiRequest):
    key = await req.authenticate(publishable_ok=False, scope="images")
    data = validate(ImageRequest, parse_json(await req.body()))
    entry = await catalog.get_for(key, data.model)
    price = entry.price_at(timezone.now())
    if price is None:
        raise GatewayError("model_not_found", f"The model '{data.model}' has no price yet.", param="model")
    if not price.per_image:
        raise GatewayError("invalid_request", f"The model '{data.model}' does not generate images.", param="model")
    unit = price.image_price(data.size)
    if unit is None:
        offered = ", ".join(size for size, _ in price.per_image)
        raise GatewayError("invalid_request", f"The model '{data.model}' does not make {data.size} images "
                           f"(it makes: {offered}).", param="size")
    candidates_for(entry, key)  # no eligible node: 503 before anything is counted or held
    decision = await limits.admit(key=key, tokens=0)
    req.extra_headers.update(decision.headers())
    paid = PaidRequest(key=key, request_id=req.request_id, endpoint=ENDPOINT, price=price, stream=False, claim=None,
                       session_id=req.session_id, ask_less="ask for fewer or smaller images")
    from .tasks import run_image_job

    job = await gw_jobs.submit(
        paid=paid, kind=Job.Kind.IMAGE, amount=data.n * unit, task=run_image_job,
        params={"model": data.model, "size": data.size, "n": data.n, "response_format": data.response_format},
        input={"prompt": data.prompt, "model": data.model, "size": data.size, "n": data.n},
    )
    if respond_async(req.headers) or settings.IMAGES_WAIT_SECONDS == 0:
        return _job_response(req, job, status=202)
    done = await gw_jobs.wait(job_id=job.public_id, project_id=key.project_id, timeout=settings.IMAGES_WAIT_SECONDS)
    if done is None:  # still running: the client polls GET /v1/jobs/{id}
        return _job_response(req, await paidjobs.job_load(public_id=job.public_id, project_id=key.project_id) or job,
                             status=202)
    if done.status != Job.Status.SUCCEEDED:
        raise gw_jobs.job_error(done)
    return images_response(req, done)


async def get_image(req: ApiRequest):
    """GET /v1/images/{job_id}/{index}: one image of the project's finished job, as PNG."""
    key = await req.authenticate(publishable_ok=False, scope="images")
    job_id, index = req.request.path_params["job_id"], req.request.path_params["index"]
    job = await paidjobs.job_load(public_id=job_id, project_id=key.project_id, kind=Job.Kind.IMAGE)
    missing = GatewayError("not_found", f"No image {index} of job '{job_id}' in this project.")
    if job is None or job.status != Job.Status.SUCCEEDED or not (index.isascii() and index.isdigit() and len(index) < 4):
        raise missing
    images = jobs.job_result(job=job)["images"]
    if int(index) >= len(images):
        raise missing
    headers = {**req.response_headers(), "cache-control": "private, max-age=3600", "x-job-id": job.public_id}
    return Response(base64.b64decode(images[int(index)]), media_type="image/png", headers=headers)


# --- the worker ------------------------------------------------------------------------


def _pngs(answer: dict, limit: int) -> list[str]:
    """The node's images that really are PNGs (at most ``limit``): only those are billed."""
    out = []
    for item in (answer.get("data") or [])[:limit]:
        raw = item.get("b64_json") if isinstance(item, dict) else None
        try:
            if isinstance(raw, str) and base64.b64decode(raw, validate=True).startswith(PNG_SIGNATURE):
                out.append(raw)
        except (binascii.Error, ValueError):
            continue
    return out


class ImageRun(gw_jobs.JobRun):
    endpoint = ENDPOINT

    def run(self) -> None:
        job, node_id, images = self.job, "", []
        try:
            self.hold()
            spec = jobs.job_input(job=job)
            project = job.project
            candidates = job_candidates(model=spec["model"], allow_non_confidential=project.allow_non_confidential,
                                        region=project.region_preference)
            if not candidates:
                raise gw_jobs.JobFailed("no_nodes_available", f"No eligible node serves '{spec['model']}' now; "
                                        "nothing was charged.")
            upstream = {"prompt": spec["prompt"], "n": spec["n"], "size": spec["size"], "response_format": "b64_json"}

            async def generate(served):
                return await adapter_for(served.node).images(upstream)

            try:
                served, answer = self.step(first_node(self.bill, candidates, upstream, generate))
            except NodeError as exc:
                raise gw_jobs.node_failure(exc) from None
            node_id = served.node.public_id
            paidjobs.job_assign_node(job=job, node_id=served.node.id)
            images = _pngs(answer, spec["n"])
            if not images:
                raise gw_jobs.JobFailed("upstream_unavailable", "The node returned no image; nothing was charged.")
        except gw_jobs.JobFailed as failure:
            bill = self.bill
            settle = (lambda: bill.void(error_code=failure.code, node_id=node_id)) if bill else None
            self.finish(status=Job.Status.FAILED, error=failure, settle=settle)
            return
        except Exception:
            log.exception("image job %s failed", job.public_id)
            bill = self.bill
            failure = gw_jobs.JobFailed("internal_error", "The job failed; nothing was charged.")
            self.finish(status=Job.Status.FAILED, error=failure,
                        settle=(lambda: bill.void(error_code="internal_error")) if bill else None)
            return
        unit = self.bill.reservation.price.image_price(spec["size"])
        result = {"created": int(time.time()), "images": images, "node": node_info(served)}

        def settle() -> None:  # exactly the images produced, at the price version reserved
            result["cost"] = self.bill.settle(usage=Usage(0, 0), node_id=node_id, amount=len(images) * unit)

        self.finish(status=Job.Status.SUCCEEDED, result=result, settle=settle)


def run_job(job_id: str, *, redelivered: bool = False) -> None:
    run = ImageRun.claim(job_id, redelivered=redelivered)
    if run is None:
        return
    try:
        run.run()
    finally:
        run.close()
