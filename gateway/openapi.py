"""GET /v1/openapi.json: the OpenAPI 3.1 document of the /v1 surface.

Built once per process and served as cached bytes. Request bodies are the JSON
Schema of the pydantic models that validate them (gateway/schemas.py and
gateway/protocols/), so the document cannot drift from validation; response
objects are written out here. Error responses are derived from ``errors.CODES``
(and, on /v1/messages, from the Anthropic type names): each status lists exactly
the codes that produce it. tests/gateway/test_openapi.py runs schemathesis
against a live server to keep every documented shape, status and header true.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from console.keys import SCOPES

from . import images, node_management, nodes_api, schemas
from .agents import api as agents_api
from .context import ApiRequest, json_response
from .errors import CODES
from .protocols import completions, messages, responses

Schema = dict[str, Any]
OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Schema, required: tuple[str, ...] = (), **extra: Any) -> Schema:
    return {"type": "object", "properties": properties, "required": list(required), **extra}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
TIMESTAMP = {"type": "integer", "description": "Unix time in seconds."}


# --- request bodies ------------------------------------------------------------------
# Every request body is validated by a pydantic model; the document uses their own
# JSON Schema (2020-12, as OpenAPI 3.1). Each protocol's nested models get its prefix,
# so the OpenAI chat `Tool` and the Anthropic `Tool` stay apart.

REQUEST_MODELS: dict[str, tuple[type[BaseModel], ...]] = {
    "": (schemas.ChatCompletionRequest, completions.CompletionRequest, completions.EmbeddingRequest,
         images.ImageRequest, agents_api.AgentRunRequest),
    "Responses": (responses.ResponsesRequest,),
    "Anthropic": (messages.MessagesRequest, messages.CountTokensRequest),
    "Node": (
        nodes_api.NodeRegisterRequest, nodes_api.NodeHeartbeatRequest,
        node_management.NodeModelRequest, node_management.NodeModelPullRequest,
    ),
}


def _renamed(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        # pydantic's titles are noise in a document; a property named "title" is a dict, and stays
        out = {k: _renamed(v, names) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
        if isinstance(node.get("$ref"), str):
            out["$ref"] = ref(names[node["$ref"].rpartition("/")[2]])["$ref"]
        return out
    if isinstance(node, list):
        return [_renamed(v, names) for v in node]
    return node


def _derived_schemas() -> dict[str, Schema]:
    """The request models' schemas and their nested models, hoisted into components."""
    derived: dict[str, Schema] = {}
    for prefix, models in REQUEST_MODELS.items():
        _, top = models_json_schema([(m, "validation") for m in models], ref_template="{model}")
        defs = top.get("$defs", {})
        names = {n: n if n.startswith(prefix) else prefix + n for n in defs}
        for name, schema in defs.items():
            renamed = _renamed(schema, names)
            if derived.setdefault(names[name], renamed) != renamed:
                raise RuntimeError(f"two request models are both named {names[name]!r}")
    return derived


# --- response objects ----------------------------------------------------------------

_NODE_INFO = obj(
    {
        "id": {"type": "string", "description": "Public id of the node that answered."},
        "attestation": {"enum": ["none", "unverified", "verified"]},
        "region": STRING,
    },
    ("id", "attestation", "region"),
    description="The node that ran the request, and whether its confidential-computing attestation was verified.",
)

_CHAT_USAGE = obj(
    {
        "prompt_tokens": COUNT,
        "completion_tokens": COUNT,
        "total_tokens": COUNT,
        "prompt_tokens_details": nullable(obj({"cached_tokens": COUNT})),
        "completion_tokens_details": nullable({"type": "object"}),
    },
    ("prompt_tokens", "completion_tokens", "total_tokens"),
)

_TOOL_CALL_OUT = obj(
    {
        "id": STRING,
        "type": {"const": "function"},
        "function": obj({"name": STRING, "arguments": STRING}, ("name", "arguments")),
    },
    ("id", "type", "function"),
)

_FINISH_REASON = nullable(
    {"type": "string", "description": "`stop`, `length`, `tool_calls` or `content_filter`, as the node reports it."}
)

_KEY_LIMITS = {
    "rpm_limit": nullable({"type": "integer", "minimum": 1, "maximum": 1_000_000, "description": "Requests a minute."}),
    "tpm_limit": nullable({"type": "integer", "minimum": 1, "maximum": 10**12, "description": "Tokens a minute."}),
    "monthly_spend_cap": nullable(
        {"type": "integer", "minimum": 0, "maximum": 10**15, "description": "Micro-units a calendar month (UTC)."}
    ),
}

_KEY_SCOPES = {
    "type": "array",
    "items": {"enum": list(SCOPES)},
    "description": "What the key may call (chat: chat, completions, responses, messages; models: read models "
                   "and nodes); empty: everything. A scoped key cannot manage keys.",
}

_STATUS = {"enum": ["active", "draining", "disabled"]}
_ATTESTATION = {"enum": ["none", "unverified", "verified"]}
_LOAD = {"type": "number", "minimum": 0, "maximum": 1, "description": "As last reported by the node."}


def _by_region(node: Schema, *, counts: bool) -> Schema:
    properties: Schema = {"region": STRING, "nodes": {"type": "array", "items": node}}
    if counts:
        properties.update(healthy=COUNT, unhealthy=COUNT)
    return obj(properties, tuple(properties))


def _management_objects() -> dict[str, Schema]:
    """Jobs, model management, topology and health (gateway/node_management.py)."""
    from nodes.models import Job

    health = {
        "id": {"type": "string", "pattern": "^node_"},
        "name": STRING,
        "status": _STATUS,
        "healthy": {"type": "boolean"},
        "attestation": _ATTESTATION,
        "attestation_expires_at": nullable(TIMESTAMP),
        "load": _LOAD,
        "queue_depth": COUNT,
        "last_heartbeat_at": nullable(TIMESTAMP),
        "last_probe_at": nullable(TIMESTAMP),
        "consecutive_failures": COUNT,
        "members": {
            "type": "array",
            "items": {"type": "object"},
            "description": "A cluster node's members (Thox-style clusters); empty for a single node.",
        },
    }
    topology = {
        **health,
        "base_url": STRING,
        "adapter": STRING,
        "hardware": STRING,
        "gpus": COUNT,
        "models": obj(
            {"served": {"type": "array", "items": STRING}, "loaded": {"type": "array", "items": STRING}},
            ("served", "loaded"),
        ),
    }
    public_health = {"id": {"type": "string", "pattern": "^node_"}, "healthy": {"type": "boolean"},
                     "attestation": _ATTESTATION, "load": _LOAD}
    public_topology = {**public_health, "gpus": COUNT, "models": {"type": "array", "items": STRING}}
    scope = {"enum": ["operator", "project"], "description": "`operator` for a node token, `project` for a secret key."}
    return {
        "Job": obj(
            {
                "id": {"type": "string", "pattern": "^job_"},
                "object": {"const": "job"},
                "kind": {"enum": list(Job.Kind.values)},
                "status": {"enum": list(Job.Status.values)},
                "node": nullable(STRING),
                "params": {"type": "object", "description": "What the job was asked to do (metadata only)."},
                "progress": {
                    "type": "object",
                    "description": "The latest progress: for a pull `{status, completed?, total?, attempt}`; "
                    "`status` `retrying` (with `error`, `retry_in` seconds) while a retry waits.",
                },
                "created_at": TIMESTAMP,
                "started_at": nullable(TIMESTAMP),
                "finished_at": nullable(TIMESTAMP),
                "error": nullable(obj({"code": STRING, "message": STRING}, ("code", "message"))),
                "result": {"description": "Once succeeded: for a pull `{model, served, served_model, already_served?}`; "
                           "for images, the images; for an agent run, its output, stop reason, usage, cost and events."},
            },
            ("id", "object", "kind", "status", "node", "params", "progress", "created_at", "started_at",
             "finished_at", "error"),
        ),
        "NodeModelChange": obj(
            {
                "object": {"const": "node.model"},
                "node": STRING,
                "model": STRING,
                "action": {"enum": ["load", "unload"]},
                "models_loaded": {"type": "array", "items": STRING, "description": "The node's loaded models now."},
            },
            ("object", "node", "model", "action", "models_loaded"),
        ),
        "OperatorTopologyNode": obj(topology, tuple(topology), additionalProperties=False),
        "PublicTopologyNode": obj(public_topology, tuple(public_topology), additionalProperties=False),
        "OperatorHealthNode": obj(health, tuple(health), additionalProperties=False),
        "PublicHealthNode": obj(public_health, tuple(public_health), additionalProperties=False),
        "NodeTopology": obj(
            {
                "object": {"const": "node.topology"},
                "scope": scope,
                "regions": {"type": "array", "items": _by_region(
                    {"anyOf": [ref("OperatorTopologyNode"), ref("PublicTopologyNode")]}, counts=False
                )},
            },
            ("object", "scope", "regions"),
        ),
        "NodeHealth": obj(
            {
                "object": {"const": "node.health"},
                "scope": scope,
                "checked_at": TIMESTAMP,
                "nodes": COUNT,
                "healthy": COUNT,
                "unhealthy": COUNT,
                "regions": {"type": "array", "items": _by_region(
                    {"anyOf": [ref("OperatorHealthNode"), ref("PublicHealthNode")]}, counts=True
                )},
            },
            ("object", "scope", "checked_at", "nodes", "healthy", "unhealthy", "regions"),
        ),
    }


_RESPONSE_OBJECTS: dict[str, Schema] = {
    "NodeInfo": _NODE_INFO,
    "CompletionUsage": _CHAT_USAGE,
    "ChatCompletion": obj(
        {
            "id": {"type": "string", "pattern": "^chatcmpl-"},
            "object": {"const": "chat.completion"},
            "created": TIMESTAMP,
            "model": STRING,
            "choices": {
                "type": "array",
                "items": obj(
                    {
                        "index": COUNT,
                        "message": obj(
                            {
                                "role": {"const": "assistant"},
                                "content": nullable(STRING),
                                "tool_calls": {"type": "array", "items": _TOOL_CALL_OUT},
                                "refusal": nullable(STRING),
                            },
                            ("role",),
                        ),
                        "finish_reason": _FINISH_REASON,
                        "logprobs": nullable({"type": "object"}),
                    },
                    ("index", "message", "finish_reason"),
                ),
            },
            "usage": ref("CompletionUsage"),
            "node": ref("NodeInfo"),
        },
        ("id", "object", "created", "model", "choices", "usage", "node"),
        description="`usage` is what was billed: the node's count, or an estimate if it reported none.",
    ),
    "ChatCompletionChunk": obj(
        {
            "id": {"type": "string", "pattern": "^chatcmpl-"},
            "object": {"const": "chat.completion.chunk"},
            "created": TIMESTAMP,
            "model": STRING,
            "choices": {
                "type": "array",
                "items": obj(
                    {"index": COUNT, "delta": {"type": "object"}, "finish_reason": _FINISH_REASON},
                    ("index", "delta"),
                ),
            },
            "usage": nullable(ref("CompletionUsage")),
            "node": ref("NodeInfo"),
        },
        ("id", "object", "created", "model", "choices"),
        description="One `data:` event of a chat stream. The first carries `node`; with "
        "`stream_options.include_usage` a last chunk with empty `choices` carries `usage`; "
        "the stream ends with `data: [DONE]`, or with an error envelope if the node failed mid-answer.",
    ),
    "TextCompletion": obj(
        {
            "id": {"type": "string", "pattern": "^cmpl-"},
            "object": {"const": "text_completion"},
            "created": TIMESTAMP,
            "model": STRING,
            "choices": {
                "type": "array",
                "items": obj(
                    {
                        "index": COUNT,
                        "text": STRING,
                        "finish_reason": _FINISH_REASON,
                        "logprobs": nullable({"type": "object"}),
                    },
                    ("index", "text", "finish_reason"),
                ),
            },
            "usage": ref("CompletionUsage"),
            "node": ref("NodeInfo"),
        },
        ("id", "object", "created", "model", "choices", "usage", "node"),
    ),
    "EmbeddingList": obj(
        {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": obj(
                    {
                        "object": {"const": "embedding"},
                        "index": COUNT,
                        "embedding": {
                            "anyOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64", "description": "Little-endian float32s."},
                            ]
                        },
                    },
                    ("object", "index", "embedding"),
                ),
            },
            "model": STRING,
            "usage": obj({"prompt_tokens": COUNT, "total_tokens": COUNT}, ("prompt_tokens", "total_tokens")),
            "node": ref("NodeInfo"),
        },
        ("object", "data", "model", "usage", "node"),
    ),
    "ResponseOutputItem": {
        "oneOf": [
            obj(
                {
                    "type": {"const": "message"},
                    "id": STRING,
                    "role": {"const": "assistant"},
                    "status": {"enum": ["completed", "incomplete", "in_progress"]},
                    "content": {
                        "type": "array",
                        "items": obj(
                            {
                                "type": {"const": "output_text"},
                                "text": STRING,
                                "annotations": {"type": "array"},
                            },
                            ("type", "text", "annotations"),
                        ),
                    },
                },
                ("type", "id", "role", "status", "content"),
            ),
            obj(
                {
                    "type": {"const": "function_call"},
                    "id": STRING,
                    "call_id": STRING,
                    "name": STRING,
                    "arguments": STRING,
                    "status": {"enum": ["completed", "incomplete", "in_progress"]},
                },
                ("type", "id", "call_id", "name", "arguments"),
            ),
        ]
    },
    "Response": obj(
        {
            "id": {"type": "string", "pattern": "^resp_"},
            "object": {"const": "response"},
            "created_at": TIMESTAMP,
            "status": {"enum": ["completed", "incomplete", "failed"]},
            "error": nullable(obj({"code": STRING, "message": STRING}, ("code", "message"))),
            "incomplete_details": nullable(obj({"reason": STRING}, ("reason",))),
            "model": STRING,
            "output": {"type": "array", "items": ref("ResponseOutputItem")},
            "usage": nullable(
                obj(
                    {
                        "input_tokens": COUNT,
                        "input_tokens_details": obj({"cached_tokens": COUNT}, ("cached_tokens",)),
                        "output_tokens": COUNT,
                        "output_tokens_details": obj({"reasoning_tokens": COUNT}, ("reasoning_tokens",)),
                        "total_tokens": COUNT,
                    },
                    ("input_tokens", "output_tokens", "total_tokens"),
                )
            ),
            "instructions": nullable(STRING),
            "max_output_tokens": nullable(INTEGER),
            "parallel_tool_calls": {"type": "boolean"},
            "previous_response_id": {"type": "null"},
            "store": {"type": "boolean"},
            "temperature": nullable({"type": "number"}),
            "top_p": nullable({"type": "number"}),
            "text": {"type": "object"},
            "tool_choice": {"anyOf": [STRING, {"type": "object"}]},
            "tools": {"type": "array", "items": {"type": "object"}},
            "truncation": STRING,
            "metadata": {"type": "object", "additionalProperties": STRING},
            "node": ref("NodeInfo"),
        },
        ("id", "object", "created_at", "status", "model", "output", "usage", "node"),
        description="A response, as answered and as stored (when `store` is true) for GET /v1/responses/{id}.",
    ),
    "Message": obj(
        {
            "id": {"type": "string", "pattern": "^msg_"},
            "type": {"const": "message"},
            "role": {"const": "assistant"},
            "model": STRING,
            "content": {
                "type": "array",
                "items": {
                    "oneOf": [
                        obj({"type": {"const": "text"}, "text": STRING}, ("type", "text")),
                        obj(
                            {"type": {"const": "tool_use"}, "id": STRING, "name": STRING, "input": {"type": "object"}},
                            ("type", "id", "name", "input"),
                        ),
                    ]
                },
            },
            "stop_reason": nullable({"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]}),
            "stop_sequence": nullable(STRING),
            "usage": obj(
                {
                    "input_tokens": COUNT,
                    "output_tokens": COUNT,
                    "cache_read_input_tokens": nullable(COUNT),
                    "cache_creation_input_tokens": nullable(COUNT),
                },
                ("input_tokens", "output_tokens"),
            ),
            "node": ref("NodeInfo"),
        },
        ("id", "type", "role", "model", "content", "stop_reason", "usage", "node"),
    ),
    "MessageTokensCount": obj({"input_tokens": COUNT}, ("input_tokens",)),
    "Model": obj(
        {
            "id": STRING,
            "object": {"const": "model"},
            "created": TIMESTAMP,
            "owned_by": STRING,
            "context_window": {"type": "integer", "minimum": 1},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "pricing": obj(
                {
                    "currency": STRING,
                    "unit": {"const": "micros_per_million_tokens"},
                    "input": COUNT,
                    "cached_input": COUNT,
                    "output": COUNT,
                    "version": INTEGER,
                    "images": obj(
                        {"unit": {"const": "micros_per_image"}},
                        ("unit",),
                        additionalProperties=COUNT,
                        description="An image model's price per image, by size (`1024x1024`: micro-units).",
                    ),
                },
                ("currency", "unit", "input", "cached_input", "output", "version"),
            ),
        },
        ("id", "object", "created", "owned_by", "context_window", "max_output_tokens", "pricing"),
    ),
    "ModelList": obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}, ("object", "data")
    ),
    "ApiKey": obj(
        {
            "id": {"type": "string", "pattern": "^key_"},
            "object": {"const": "api_key"},
            "kind": {"enum": ["secret", "publishable"]},
            "name": STRING,
            "redacted": STRING,
            "status": {"enum": ["active", "revoked"]},
            "project": STRING,
            "created_at": TIMESTAMP,
            "expires_at": nullable(TIMESTAMP),
            "revoked_at": nullable(TIMESTAMP),
            "rotated_from": nullable(STRING),
            **_KEY_LIMITS,
            "scopes": _KEY_SCOPES,
        },
        (
            "id", "object", "kind", "name", "redacted", "status", "project", "created_at", "expires_at",
            "revoked_at", "rotated_from", *_KEY_LIMITS, "scopes",
        ),
        description="A key; its own limits apply on top of the project's (null: none of its own).",
    ),
    "ApiKeyCreated": {
        "allOf": [ref("ApiKey"), obj({"key": {"type": "string", "description": "The key itself; shown only here."}}, ("key",))]
    },
    "ApiKeyRotated": {
        "allOf": [ref("ApiKeyCreated"), obj({"previous": ref("ApiKey")}, ("previous",))],
        "description": "The new key; `previous` is the old one, which expires after the grace period.",
    },
    "ApiKeyList": obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("ApiKey")}}, ("object", "data")
    ),
    "KeyCreateRequest": obj(
        {
            "kind": {"enum": ["secret", "publishable"]},
            "name": {"type": "string", "maxLength": 200, "default": ""},
            **_KEY_LIMITS,
            "scopes": _KEY_SCOPES,
        },
        ("kind",),
    ),
    "KeyUpdateRequest": obj(_KEY_LIMITS, description="Only the fields sent change; null removes a limit."),
    "KeyRotateRequest": obj(
        {
            "grace_seconds": {
                "type": "integer",
                "minimum": 0,
                "maximum": 30 * 24 * 3600,
                "default": 3600,
                "description": "How long the old key keeps working.",
            }
        }
    ),
    "PublicNode": obj(
        {
            "id": {"type": "string", "pattern": "^node_"},
            "region": STRING,
            "attestation": {"enum": ["none", "unverified", "verified"]},
            "gpus": COUNT,
            "load": {"type": "number", "minimum": 0, "maximum": 1, "description": "As last reported by the node."},
            "models": {"type": "array", "items": STRING},
            "public_keys": nullable(ref("NodePublicKeys")),
        },
        ("id", "region", "attestation", "gpus", "load", "models", "public_keys"),
        additionalProperties=False,
    ),
    "GatewayPublicKey": obj(
        {
            "key_id": {"type": "string", "pattern": "^gwkey_"},
            "encryption_key": {"type": "string", "description": "X25519 (base64 raw): standard-tier envelopes are "
                               "sealed to it."},
            "signing_key": {"type": "string", "description": "Ed25519 (base64 raw): checks standard-tier receipts."},
        },
        ("key_id", "encryption_key", "signing_key"),
        additionalProperties=False,
    ),
    "SealedChatRequest": obj(
        {
            "version": {"const": 1},
            "tier": {"enum": ["standard", "high", "maximum"]},
            "payload_id": {"type": "string", "description": "URL-safe base64 (no padding) of 16 random bytes."},
            "recipient": obj(
                {"node_id": nullable({"type": "string"}), "encryption_key": {"type": "string"}},
                ("node_id", "encryption_key"),
                additionalProperties=False,
                description="The node (null and the gateway's key for `standard`) and the X25519 key sealed to.",
            ),
            "header": obj(
                {"model": {"type": "string", "minLength": 1}, "max_tokens": {"type": "integer", "minimum": 1},
                 "stream": {"type": "boolean", "default": False}},
                ("model", "max_tokens"),
                additionalProperties=False,
                description="The only clear fields: the gateway routes and reserves from them.",
            ),
            "client_public_key": {"type": "string", "description": "X25519 (base64 raw): the answer is sealed to it."},
            "ephemeral_public_key": {"type": "string"},
            "nonce": {"type": "string", "description": "Base64 of 12 bytes."},
            "ciphertext": {"type": "string", "description": "AES-256-GCM ciphertext and tag, base64."},
        },
        ("version", "tier", "payload_id", "recipient", "header", "client_public_key", "ephemeral_public_key", "nonce",
         "ciphertext"),
        additionalProperties=False,
        description="A hybrid-encrypted chat request; the format is gateway/SEALED.md.",
    ),
    "SignedReceipt": obj(
        {"receipt": {"type": "string", "description": "Base64 of the exact signed receipt bytes (canonical JSON)."},
         "signature": {"type": "string", "description": "Base64 Ed25519 signature over those bytes."}},
        ("receipt", "signature"),
    ),
    "SealedResponse": obj(
        {
            "object": {"const": "sealed.response"},
            "ephemeral_public_key": STRING,
            "seq": {"const": 0},
            "nonce": STRING,
            "ciphertext": {"type": "string", "description": "The chat completion, sealed to `client_public_key`."},
            "receipt": ref("SignedReceipt"),
        },
        ("object", "ephemeral_public_key", "seq", "nonce", "ciphertext", "receipt"),
    ),
    "SealedEvent": obj(
        {
            "ephemeral_public_key": STRING,
            "seq": {"type": "integer", "minimum": 0},
            "nonce": STRING,
            "ciphertext": STRING,
            "receipt": ref("SignedReceipt"),
        },
        description="`sealed.start` (ephemeral_public_key), `sealed.chunk` (seq, nonce, ciphertext: one sealed "
        "chat.completion.chunk), `sealed.receipt` (receipt, sent after settlement), or `error`; then `[DONE]`.",
    ),
    "UsageReceipt": obj(
        {
            "object": {"const": "usage_receipt"},
            "request_id": STRING,
            "node_id": {"type": "string", "description": "The node's id, or `gateway` for the standard tier."},
            "tier": {"enum": ["standard", "high", "maximum"]},
            "signing_key": {"type": "string", "description": "The attested Ed25519 key it was checked with."},
            "receipt": {"type": "string", "description": "Base64 of the exact signed bytes."},
            "signature": STRING,
            "verified": {"type": "boolean", "description": "False: refused (see reason); the charge was voided."},
            "reason": STRING,
            "input_tokens": COUNT,
            "output_tokens": COUNT,
            "cost": {"type": "integer", "minimum": 0, "description": "Micro-units settled from it (0 if voided)."},
            "currency": STRING,
            "created_at": TIMESTAMP,
        },
        ("object", "request_id", "node_id", "tier", "signing_key", "receipt", "signature", "verified", "reason",
         "input_tokens", "output_tokens", "cost", "currency", "created_at"),
    ),
    "UsageReceiptList": obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("UsageReceipt")}}, ("object", "data")
    ),
    "NodePublicKeys": obj(
        {
            "signing": {"type": "string", "description": "Ed25519 public key (base64 of the raw 32 bytes): "
                        "checks the node's signed usage receipts."},
            "encryption": {"type": "string", "description": "X25519 public key (base64 of the raw 32 bytes): "
                           "seals requests only this node can open."},
        },
        ("signing", "encryption"),
        description="The keys the node's verified attestation bound to its measurement; null for a node without attestation.",
    ),
    "NodeAttestation": obj(
        {
            "object": {"const": "node.attestation"},
            "id": {"type": "string", "pattern": "^att_"},
            "node": {"type": "string", "pattern": "^node_"},
            "result": {"const": "verified"},
            "format": {"type": "string", "description": "The evidence format, e.g. `x509-report-v1`."},
            "measurement": {"type": "string", "pattern": "^[0-9a-f]{32,128}$",
                            "description": "Hex digest of the node's software, as allow-listed by the platform."},
            "public_keys": ref("NodePublicKeys"),
            "root_fingerprint": {"type": "string", "description": "SHA-256 (hex) of the trusted root certificate the "
                                 "evidence chains to."},
            "nonce": {"type": "string", "description": "The single-use challenge the evidence answers."},
            "issued_at": nullable(TIMESTAMP),
            "verified_at": TIMESTAMP,
            "expires_at": TIMESTAMP,
            "evidence": obj(
                {"format": STRING},
                ("format",),
                description="Exactly as the node sent it. For `x509-report-v1`: `report` (base64 of the signed JSON "
                "report: version, nonce, issued_at, measurement, signing_key, encryption_key), `signature` (base64, "
                "by the key of `certificates[0]`) and `certificates` (PEM, the attestation key's first, then "
                "intermediates up to the trusted root).",
            ),
        },
        ("object", "id", "node", "result", "format", "measurement", "public_keys", "root_fingerprint", "nonce",
         "issued_at", "verified_at", "expires_at", "evidence"),
    ),
    "PublicNodeList": obj(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("PublicNode")}}, ("object", "data")
    ),
    "Node": obj(
        {
            "id": {"type": "string", "pattern": "^node_"},
            "object": {"const": "node"},
            "name": STRING,
            "base_url": STRING,
            "adapter": STRING,
            "region": STRING,
            "hardware": STRING,
            "gpus": COUNT,
            "status": {"enum": ["active", "draining", "disabled"]},
            "attestation": {"enum": ["none", "unverified", "verified"]},
            "healthy": {"type": "boolean"},
            "load": {"type": "number", "minimum": 0, "maximum": 1},
            "has_credentials": {"type": "boolean", "description": "Credentials are never returned."},
            "models": {"type": "array", "items": obj(
                {
                    "model": STRING,
                    "upstream_model": STRING,
                    "context_window": COUNT,
                    "max_output_tokens": COUNT,
                    "input_modalities": {"type": "array", "items": {"enum": ["text", "image", "audio"]}},
                },
                ("model", "upstream_model", "context_window", "max_output_tokens", "input_modalities"),
            )},
            "created_at": TIMESTAMP,
            "cluster_url": {"type": "string", "description": "Clusters (adapter thox) only: the cluster API."},
            "members": {
                "type": "array",
                "description": "Clusters (adapter thox) only: the devices in the cluster, as last read from it.",
                "items": obj(
                    {
                        "id": STRING,
                        "name": STRING,
                        "role": STRING,
                        "hardware": STRING,
                        "gpus": COUNT,
                        "ram_gb": COUNT,
                        "status": STRING,
                        "healthy": {"type": "boolean"},
                        "load": {"type": "number", "minimum": 0, "maximum": 1},
                        "models_loaded": {"type": "array", "items": STRING},
                        "last_seen": nullable(TIMESTAMP),
                    },
                    ("id", "name", "role", "hardware", "gpus", "ram_gb", "status", "healthy", "load", "models_loaded",
                     "last_seen"),
                ),
            },
        },
        ("id", "object", "name", "base_url", "adapter", "region", "hardware", "gpus", "status", "attestation",
         "healthy", "load", "has_credentials", "models", "created_at"),
    ),
    "NodeHeartbeat": obj(
        {
            "id": {"type": "string"},
            "object": {"const": "node.heartbeat"},
            "status": {"enum": ["active", "draining", "disabled"]},
            "healthy": {"const": True},
            "received_at": TIMESTAMP,
        },
        ("id", "object", "status", "healthy", "received_at"),
    ),
    **_management_objects(),
    "ImagesResponse": obj(
        {
            "created": TIMESTAMP,
            "data": {"type": "array", "items": obj({
                "b64_json": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
                "url": {"type": "string", "description": "GET it with this project's secret key."},
            })},
            "size": {"enum": ["512x512", "1024x1024", "1024x1792"]},
            "output_format": {"const": "png"},
            "billing": obj({"images": COUNT, "cost_micros": COUNT}, ("images", "cost_micros"),
                           description="Images produced, and what they cost (fewer than `n` are billed as fewer)."),
            "node": ref("NodeInfo"),
        },
        ("created", "data"),
        description="OpenAI's images response; `X-Job-ID` names the job that made them.",
    ),
    "Balance": obj(
        {
            "object": {"const": "balance"},
            "currency": STRING,
            "balance_micros": {"type": "integer", "description": "Micro-units of the currency."},
            "reserved_micros": {"type": "integer", "description": "Held for requests in flight."},
            "available_micros": INTEGER,
        },
        ("object", "currency", "balance_micros", "reserved_micros", "available_micros"),
    ),
}


def sse(data: Schema) -> Schema:
    """One server-sent event (OpenAPI 3.1 reads a ``text/event-stream`` schema per event);
    ``data`` is JSON described by ``contentSchema``, or the closing ``[DONE]``."""
    return obj(
        {
            "id": {"type": "string", "pattern": "^evt_[0-9]+$", "description": "Send it back as Last-Event-ID to resume."},
            "event": STRING,
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
        ("data",),
    )


# --- errors ----------------------------------------------------------------------------

# Codes that only ever close a stream (as its last event), never an HTTP status.
STREAM_ONLY_CODES = {"stream_cancelled"}
# How the Anthropic routes name each status's error type (gateway/protocols/messages.py).
ANTHROPIC_TYPES: dict[int, str] = messages.ERROR_TYPES

_STATUS_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    402: "PaymentRequired",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "UnprocessableEntity",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


def _codes_by_status() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for code, (status, _) in CODES.items():
        if code not in STREAM_ONLY_CODES:
            out.setdefault(status, []).append(code)
    return out


def _error_schemas() -> dict[str, Schema]:
    return {
        "ErrorCode": {"enum": list(CODES)},
        "Error": obj(
            {
                "error": obj(
                    {
                        "type": {"enum": sorted({t for _, t in CODES.values()})},
                        "code": ref("ErrorCode"),
                        "message": STRING,
                        "request_id": STRING,
                        "param": {"type": "string", "description": "The request field at fault, when there is one."},
                    },
                    ("type", "code", "message", "request_id"),
                )
            },
            ("error",),
            description="Every error under /v1 but /v1/messages. `code` fixes the HTTP status.",
        ),
        "AnthropicError": obj(
            {
                "type": {"const": "error"},
                "error": obj(
                    {"type": {"enum": sorted(set(ANTHROPIC_TYPES.values()))}, "message": STRING, "code": ref("ErrorCode")},
                    ("type", "message", "code"),
                ),
                "request_id": STRING,
            },
            ("type", "error", "request_id"),
            description="Errors on /v1/messages routes, in the Anthropic API's shape.",
        ),
    }


def _header(schema: Schema, description: str, *, required: bool = False) -> Schema:
    return {"description": description, "required": required, "schema": schema}


_LIMIT = {"type": "integer", "minimum": 0}
_RESET = {"type": "string", "pattern": "^[0-9]+ms$"}


def _headers() -> dict[str, Schema]:
    headers = {
        "X-Request-ID": _header(
            STRING, "This request's id (the client's own, if it sent a valid one). On every response.", required=True
        ),
        "Retry-After": _header({"type": "integer", "minimum": 1}, "Seconds to wait before retrying."),
        "X-Node-ID": _header(STRING, "The node that answered."),
        "X-Node-Attestation": _header({"enum": ["none", "unverified", "verified"]}, "That node's attestation."),
        "Idempotent-Replayed": _header({"const": "true"}, "Present when this is a stored answer to a retried key."),
        "Location": _header(STRING, "Where to follow the job: `/v1/jobs/{id}`."),
        "request-id": _header(STRING, "The same id, where Anthropic clients look for it.", required=True),
        "X-Job-ID": _header({"type": "string", "pattern": "^job_"}, "The job that runs (or ran) this request."),
    }
    for unit in ("requests", "tokens"):
        headers[f"X-RateLimit-Limit-{unit.title()}"] = _header(_LIMIT, f"The project's {unit} per minute.")
        headers[f"X-RateLimit-Remaining-{unit.title()}"] = _header(_LIMIT, f"{unit.title()} left in the bucket.")
        headers[f"X-RateLimit-Reset-{unit.title()}"] = _header(_RESET, "Time until the bucket is full again.")
    return headers


_HEADERS = _headers()
RATE_LIMIT_HEADERS = [f"X-RateLimit-{a}-{b}" for a in ("Limit", "Remaining", "Reset") for b in ("Requests", "Tokens")]


def _header_refs(names: list[str], *, required: tuple[str, ...] = ()) -> Schema:
    out = {}
    for name in names:
        if name in required and not _HEADERS[name]["required"]:
            out[name] = {**_HEADERS[name], "required": True}  # a $ref cannot change `required`
        else:
            out[name] = {"$ref": f"#/components/headers/{name}"}
    return out


def _error_responses() -> dict[str, Schema]:
    """One reusable response per status, in each error shape; each names only its own codes."""
    responses = {}
    for status, codes in sorted(_codes_by_status().items()):
        name = _STATUS_NAMES[status]
        types = sorted({CODES[c][1] for c in codes})
        narrowed = obj({"error": obj({"code": {"enum": codes}, "type": {"enum": types}})})
        headers = _header_refs(
            ["X-Request-ID", "Retry-After", *RATE_LIMIT_HEADERS], required=("Retry-After",) if status == 429 else ()
        )
        responses[name] = {
            "description": f"{status}: " + ", ".join(f"`{c}`" for c in codes) + ".",
            "headers": headers,
            "content": {"application/json": {"schema": {"allOf": [ref("Error"), narrowed]}}},
        }
        narrowed = obj({"error": obj({"code": {"enum": codes}, "type": {"const": ANTHROPIC_TYPES[status]}})})
        responses[f"Anthropic{name}"] = {
            "description": f"{status}, in the Anthropic error shape.",
            "headers": {**headers, **_header_refs(["request-id"])},
            "content": {"application/json": {"schema": {"allOf": [ref("AnthropicError"), narrowed]}}},
        }
    return responses


# --- operations ------------------------------------------------------------------------

PAID = (400, 401, 402, 403, 404, 409, 413, 422, 429, 500, 502, 503)
_RESPONSE_EVENT = obj(
    {"type": {"type": "string", "description": "`response.created`, `response.output_text.delta`, … `response.completed`."}},
    ("type",),
)
_MESSAGE_EVENT = obj(
    {
        "type": {
            "enum": [
                "message_start", "content_block_start", "content_block_delta", "content_block_stop",
                "message_delta", "message_stop", "ping", "error",
            ]
        }
    },
    ("type",),
    description="The event's `data`; the SSE `event:` field carries the same type.",
)


def _errors(statuses, *, anthropic: bool = False) -> dict[str, Schema]:
    prefix = "Anthropic" if anthropic else ""
    if 413 in statuses:  # a route that reads a body also times a slow one out
        statuses = sorted({*statuses, 408})
    return {str(s): {"$ref": f"#/components/responses/{prefix}{_STATUS_NAMES[s]}"} for s in statuses}


def _json_body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(
    schema: Schema,
    description: str,
    *,
    headers: list[str] = (),
    required_headers: tuple[str, ...] = (),
    stream: Schema | None = None,
) -> Schema:
    content = {"application/json": {"schema": schema}}
    if stream is not None:
        content["text/event-stream"] = {"schema": sse(stream)}
    return {
        "description": description,
        "headers": _header_refs(["X-Request-ID", *headers], required=required_headers),
        "content": content,
    }


def _paid_ok(schema: Schema, description: str, *, stream: Schema | None = None) -> Schema:
    return _ok(
        schema,
        description + (" With `stream: true`, a `text/event-stream` of chunks." if stream else ""),
        headers=[*RATE_LIMIT_HEADERS, "X-Node-ID", "X-Node-Attestation", "Idempotent-Replayed"],
        required_headers=tuple(RATE_LIMIT_HEADERS),
        stream=stream,
    )


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


_PARAMETERS: dict[str, Schema] = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Makes a paid request safe to retry: the same key and body replay the first answer, "
        "a different body is refused (422), a retry while the first still runs gets 409. "
        "`X-Idempotency-Key` is accepted too.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    "RequestId": {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Your own id for the request, echoed back if it matches "
        "`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$` (otherwise one is assigned).",
        "schema": {"type": "string"},
    },
    "SessionId": {
        "name": "X-Session-ID",
        "in": "header",
        "required": False,
        "description": "Groups the requests of one conversation in usage records; echoed back if it matches "
        "`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$` (otherwise ignored).",
        "schema": {"type": "string"},
    },
    "AnthropicVersion": {
        "name": "anthropic-version",
        "in": "header",
        "required": False,
        "description": "Accepted for compatibility with Anthropic clients.",
        "schema": {"type": "string"},
    },
    "Prefer": {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": "`respond-async` (RFC 7240): answer 202 with the job at once instead of waiting for the images.",
        "schema": {"type": "string"},
    },
    "LastEventId": {
        "name": "Last-Event-ID",
        "in": "header",
        "required": False,
        "description": "Resume after this event (`evt_<n>`, as the stream numbered it); "
        "also honoured when a paid request is replayed for its Idempotency-Key.",
        "schema": {"type": "string"},
    },
}

_PAID_PARAMS = [_param("IdempotencyKey"), _param("RequestId"), _param("SessionId"), _param("LastEventId")]


def _path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _key_update(operation_id: str, summary: str = "Change a key's limits or spend cap") -> Schema:
    return {
        "operationId": operation_id,
        "tags": ["Management"],
        "summary": summary,
        "requestBody": _json_body(ref("KeyUpdateRequest"), required=False),
        "responses": {"200": _ok(ref("ApiKey"), "The key as it is now."), **_errors((400, 401, 403, 404, 415, 500))},
    }


def _model_change(action: str, summary: str) -> Schema:
    return {
        "post": {
            "operationId": f"{action}NodeModel",
            "tags": ["Nodes"],
            "summary": summary + " (backends that support it, e.g. Ollama)",
            "security": [{"nodeToken": []}],
            "parameters": [_path_param("node_id", "The `node_…` id."), _param("RequestId")],
            "requestBody": _json_body(ref("NodeModelRequest")),
            "responses": {
                "200": _ok(ref("NodeModelChange"), "Done on the node."),
                **_errors((400, 401, 403, 404, 413, 500, 502, 503)),
            },
        }
    }


def _paid_post(op: str, tag: str, summary: str, request: str, ok: Schema, description: str, *,
               stream: Schema | None = None, anthropic: bool = False) -> Schema:
    """A metered POST: reserve-then-settle, rate-limit headers, every paid error status."""
    params = [*_PAID_PARAMS, _param("AnthropicVersion")] if anthropic else _PAID_PARAMS
    return {
        "post": {
            "operationId": op,
            "tags": [tag],
            "summary": summary,
            "parameters": params,
            "requestBody": _json_body(ref(request)),
            "responses": {"200": _paid_ok(ok, description, stream=stream), **_errors(PAID, anthropic=anthropic)},
        }
    }


_RUN_EVENT = obj(
    {
        "type": {"enum": ["run.created", "step.started", "message", "tool.call", "tool.result", "run.completed",
                          "run.failed"]},
        "sequence_number": {"type": "integer", "minimum": 1},
    },
    ("type", "sequence_number"),
)


def _images_post(op: str, summary: str = "Generate images (secret keys only)") -> Schema:
    return {
        "post": {
            "operationId": op,
            "tags": ["Jobs"],
            "summary": summary,
            "description": "A job: n × the size's price is held, the images are made on a node and billed as many as "
            "were produced. Waits for the job (up to IMAGES_WAIT_SECONDS) unless `Prefer: respond-async`.",
            "parameters": [_param("RequestId"), _param("SessionId"), _param("Prefer")],
            "requestBody": _json_body(ref("ImageRequest")),
            "responses": {
                "200": _ok(ref("ImagesResponse"), "The images.", headers=["X-Job-ID", *RATE_LIMIT_HEADERS],
                           required_headers=("X-Job-ID",)),
                "202": _ok(ref("Job"), "The job, still running (or `Prefer: respond-async`).",
                           headers=["X-Job-ID", "Location", *RATE_LIMIT_HEADERS], required_headers=("X-Job-ID",)),
                **_errors((400, 401, 402, 403, 404, 413, 429, 500, 502, 503)),
            },
        }
    }


def _paths() -> dict[str, Schema]:
    return {
        "/v1/chat/completions": _paid_post(
            "createChatCompletion", "OpenAI", "Chat completion", "ChatCompletionRequest",
            ref("ChatCompletion"), "The answer.", stream=ref("ChatCompletionChunk"),
        ),
        "/v1/completions": _paid_post(
            "createCompletion", "OpenAI", "Text completion (legacy)", "CompletionRequest",
            ref("TextCompletion"), "The completion.", stream=ref("TextCompletion"),
        ),
        "/v1/embeddings": _paid_post(
            "createEmbedding", "OpenAI", "Embeddings (secret keys only)", "EmbeddingRequest",
            ref("EmbeddingList"), "One vector per input.",
        ),
        "/v1/responses": _paid_post(
            "createResponse", "OpenAI", "Response (OpenAI Responses API)", "ResponsesRequest",
            ref("Response"), "The response.", stream=_RESPONSE_EVENT,
        ),
        "/v1/responses/{response_id}": {
            "get": {
                "operationId": "getResponse",
                "tags": ["OpenAI"],
                "summary": "A stored response of this project",
                "parameters": [_path_param("response_id", "The `resp_…` id."), _param("RequestId")],
                "responses": {
                    "200": _ok(ref("Response"), "The stored response."),
                    **_errors((401, 403, 404, 500, 503)),
                },
            }
        },
        "/v1/messages": _paid_post(
            "createMessage", "Anthropic", "Message (Anthropic Messages API)", "AnthropicMessagesRequest",
            ref("Message"), "The message.", stream=_MESSAGE_EVENT, anthropic=True,
        ),
        "/v1/messages/count_tokens": {
            "post": {
                "operationId": "countMessageTokens",
                "tags": ["Anthropic"],
                "summary": "Count the input tokens of a message request",
                "parameters": [_param("RequestId"), _param("AnthropicVersion")],
                "requestBody": _json_body(ref("AnthropicCountTokensRequest")),
                "responses": {
                    "200": _ok(ref("MessageTokensCount"), "The count."),
                    **_errors((400, 401, 403, 404, 413, 500, 503), anthropic=True),
                },
            }
        },
        "/v1/streams/{request_id}": {
            "get": {
                "operationId": "resumeStream",
                "tags": ["Streams"],
                "summary": "Resume a stream after a dropped connection",
                "parameters": [
                    _path_param("request_id", "The X-Request-ID of the streaming request."),
                    _param("LastEventId"),
                ],
                "responses": {
                    "200": {
                        "description": "The events after Last-Event-ID, then the rest as they come.",
                        "headers": _header_refs(["X-Request-ID"]),
                        "content": {"text/event-stream": {"schema": sse({"type": "object"})}},
                    },
                    **_errors((400, 401, 403, 404, 500, 503)),
                },
            }
        },
        "/v1/images/generations": _images_post("createImage"),
        "/v1/images": _images_post("createImageShort", "Generate images (the same as /v1/images/generations)"),
        "/v1/images/{job_id}/{index}": {
            "get": {
                "operationId": "getImage",
                "tags": ["Jobs"],
                "summary": "One image of a finished image job of this project (what `url` results link to)",
                "parameters": [_path_param("job_id", "The `job_…` id."),
                               _path_param("index", "The image's place in `data`, from 0."), _param("RequestId")],
                "responses": {
                    "200": {
                        "description": "The PNG. Another project's key gets 404.",
                        "headers": _header_refs(["X-Request-ID", "X-Job-ID"]),
                        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors((401, 403, 404, 500, 503)),
                },
            }
        },
        "/v1/agents/runs": {
            "post": {
                "operationId": "createAgentRun",
                "tags": ["Jobs"],
                "summary": "Start an agent run (secret keys only)",
                "description": "The run's token budget (`max_tokens`) is held, then the run loop calls the model, "
                "runs only the granted tools, writes every tool call to the project's audit trail and settles the "
                "exact sum of its model calls.",
                "parameters": [_param("RequestId"), _param("SessionId")],
                "requestBody": _json_body(ref("AgentRunRequest")),
                "responses": {
                    "200": {
                        "description": "With `stream: true`: the run's events as they happen; `X-Request-ID` names "
                        "the stream for GET /v1/streams/{request_id}.",
                        "headers": _header_refs(["X-Request-ID", "X-Job-ID", *RATE_LIMIT_HEADERS]),
                        "content": {"text/event-stream": {"schema": sse(_RUN_EVENT)}},
                    },
                    "202": _ok(ref("Job"), "The run, queued.", headers=["X-Job-ID", "Location", *RATE_LIMIT_HEADERS],
                               required_headers=("X-Job-ID",)),
                    **_errors((400, 401, 402, 403, 404, 413, 429, 500, 503)),
                },
            }
        },
        "/v1/agents/runs/{run_id}/events": {
            "get": {
                "operationId": "getAgentRunEvents",
                "tags": ["Jobs"],
                "summary": "A run's events after Last-Event-ID: live while it runs, kept once it ended",
                "parameters": [_path_param("run_id", "The run's `job_…` id."), _param("LastEventId"),
                               _param("RequestId")],
                "responses": {
                    "200": {
                        "description": "The events after Last-Event-ID.",
                        "headers": _header_refs(["X-Request-ID", "X-Job-ID"]),
                        "content": {"text/event-stream": {"schema": sse(_RUN_EVENT)}},
                    },
                    **_errors((400, 401, 403, 404, 500, 503)),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "tags": ["OpenAI"],
                "summary": "The models this project may use, with prices",
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("ModelList"), "The models."), **_errors((401, 403, 500, 503))},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "operationId": "getModel",
                "tags": ["OpenAI"],
                "summary": "One model",
                "parameters": [_path_param("model_id", "The model's name (may contain `/`)."), _param("RequestId")],
                "responses": {"200": _ok(ref("Model"), "The model."), **_errors((401, 403, 404, 500, 503))},
            }
        },
        "/v1/keys": {
            "get": {
                "operationId": "listKeys",
                "tags": ["Management"],
                "summary": "This project's API keys (secret keys only)",
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("ApiKeyList"), "The keys, newest first."), **_errors((401, 403, 500))},
            },
            "post": {
                "operationId": "createKey",
                "tags": ["Management"],
                "summary": "Create an API key",
                "parameters": [_param("RequestId")],
                "requestBody": _json_body(ref("KeyCreateRequest")),
                "responses": {
                    "201": _ok(ref("ApiKeyCreated"), "The new key; `key` is shown only here."),
                    **_errors((400, 401, 403, 415, 500)),
                },
            },
        },
        "/v1/keys/{key_id}": {
            "parameters": [_path_param("key_id", "The `key_…` id."), _param("RequestId")],
            "get": {
                "operationId": "getKey",
                "tags": ["Management"],
                "summary": "One API key",
                "responses": {"200": _ok(ref("ApiKey"), "The key."), **_errors((401, 403, 404, 500))},
            },
            "patch": _key_update("updateKey"),
            "post": _key_update("updateKeyWithPost", "Change a key's limits or spend cap (POST, as OpenAI-style clients do)"),
            "delete": {
                "operationId": "revokeKey",
                "tags": ["Management"],
                "summary": "Revoke an API key (at once, in every gateway process)",
                "responses": {"200": _ok(ref("ApiKey"), "The revoked key."), **_errors((401, 403, 404, 500))},
            },
        },
        "/v1/keys/{key_id}/rotate": {
            "post": {
                "operationId": "rotateKey",
                "tags": ["Management"],
                "summary": "Replace an active key; the old one works for a grace period",
                "parameters": [_path_param("key_id", "The `key_…` id."), _param("RequestId")],
                "requestBody": _json_body(ref("KeyRotateRequest"), required=False),
                "responses": {
                    "201": _ok(ref("ApiKeyRotated"), "The new key and the old one."),
                    **_errors((400, 401, 403, 404, 415, 500)),
                },
            }
        },
        "/v1/balance": {
            "get": {
                "operationId": "getBalance",
                "tags": ["Management"],
                "summary": "The organization's prepaid balance",
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("Balance"), "The balance."), **_errors((401, 403, 500))},
            }
        },
        "/v1/nodes": {
            "get": {
                "operationId": "listNodes",
                "tags": ["Nodes"],
                "summary": "The active, healthy nodes serving a priced model this project may use",
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("PublicNodeList"), "The nodes."), **_errors((401, 403, 500, 503))},
            }
        },
        "/v1/sealed/chat/completions": {
            "post": {
                "operationId": "createSealedChatCompletion",
                "tags": ["Sealed"],
                "summary": "A sealed chat completion: end-to-end encrypted to an attested node (or the gateway's key)",
                "description": "The envelope and the answer follow gateway/SEALED.md. `high`/`maximum`: the gateway "
                "reads only `header`; `maximum` needs the node's attestation verified and current (503 otherwise, "
                "never another node); a key the node no longer attests is 409 `node_key_mismatch`. Billed from the "
                "node's signed usage receipt; a receipt that fails verification voids the charge (502).",
                "parameters": _PAID_PARAMS,
                "requestBody": _json_body(ref("SealedChatRequest")),
                "responses": {
                    "200": _paid_ok(ref("SealedResponse"), "The sealed answer and its receipt.", stream=ref("SealedEvent")),
                    **_errors(PAID),
                },
            }
        },
        "/v1/receipts": {
            "get": {
                "operationId": "listReceipts",
                "tags": ["Sealed"],
                "summary": "The project's sealed requests' signed usage receipts, newest first (secret keys only)",
                "parameters": [
                    {"name": "request_id", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "Only this request's receipt."},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    _param("RequestId"),
                ],
                "responses": {"200": _ok(ref("UsageReceiptList"), "The receipts."), **_errors((400, 401, 403, 500, 503))},
            }
        },
        "/pki/public_key": {
            "get": {
                "operationId": "getGatewayPublicKey",
                "tags": ["Sealed"],
                "summary": "The gateway's X25519 and Ed25519 public keys (no key needed)",
                "security": [],
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("GatewayPublicKey"), "The keys."), **_errors((500,))},
            }
        },
        "/v1/nodes/{node_id}/attestation": {
            "get": {
                "operationId": "getNodeAttestation",
                "tags": ["Nodes"],
                "summary": "The latest verified attestation evidence of a node this project may use (secret keys only)",
                "parameters": [_path_param("node_id", "The `node_…` id, as GET /v1/nodes lists it."), _param("RequestId")],
                "responses": {
                    "200": _ok(ref("NodeAttestation"), "The evidence and what it proved."),
                    **_errors((401, 403, 404, 500, 503)),
                },
            }
        },
        "/v1/nodes/register": {
            "post": {
                "operationId": "registerNode",
                "tags": ["Nodes"],
                "summary": "Register or update a node (by name) with a node token",
                "security": [{"nodeToken": []}],
                "parameters": [_param("RequestId")],
                "requestBody": _json_body(ref("NodeRegisterRequest")),
                "responses": {"200": _ok(ref("Node"), "The node."), **_errors((400, 401, 403, 413, 500, 503))},
            }
        },
        "/v1/nodes/{node_id}/heartbeat": {
            "post": {
                "operationId": "nodeHeartbeat",
                "tags": ["Nodes"],
                "summary": "Report a node's load, queue depth and loaded models; marks it healthy",
                "security": [{"nodeToken": []}],
                "parameters": [_path_param("node_id", "The `node_…` id."), _param("RequestId")],
                "requestBody": _json_body(ref("NodeHeartbeatRequest")),
                "responses": {
                    "200": _ok(ref("NodeHeartbeat"), "Recorded."),
                    **_errors((400, 401, 403, 404, 413, 500, 503)),
                },
            }
        },
        "/v1/nodes/topology": {
            "get": {
                "operationId": "nodeTopology",
                "tags": ["Nodes"],
                "summary": "Nodes by region: an operator's own (node token), or the network eligible for this project (secret key)",
                "security": [{"nodeToken": []}, {"bearerAuth": []}],
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("NodeTopology"), "The topology."), **_errors((401, 403, 500, 503))},
            }
        },
        "/v1/nodes/health": {
            "get": {
                "operationId": "nodeHealth",
                "tags": ["Nodes"],
                "summary": "Health by region, with counts: an operator's nodes, or the network eligible for this project",
                "security": [{"nodeToken": []}, {"bearerAuth": []}],
                "parameters": [_param("RequestId")],
                "responses": {"200": _ok(ref("NodeHealth"), "The health."), **_errors((401, 403, 500, 503))},
            }
        },
        "/v1/nodes/{node_id}/models/load": _model_change("load", "Load a model into the node's memory"),
        "/v1/nodes/{node_id}/models/unload": _model_change("unload", "Free a model from the node's memory"),
        "/v1/nodes/{node_id}/models/pull": {
            "post": {
                "operationId": "pullNodeModel",
                "tags": ["Nodes"],
                "summary": "Download a model onto the node, as a job; optionally serve it once pulled",
                "security": [{"nodeToken": []}],
                "parameters": [_path_param("node_id", "The `node_…` id."), _param("RequestId")],
                "requestBody": _json_body(ref("NodeModelPullRequest")),
                "responses": {
                    "202": _ok(ref("Job"), "The queued job; follow it at the Location.", headers=["Location"],
                               required_headers=("Location",)),
                    **_errors((400, 401, 403, 404, 413, 500, 503)),
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "tags": ["Nodes"],
                "summary": "A job, for its owner: a secret key of its project or a node token of its operator",
                "security": [{"bearerAuth": []}, {"nodeToken": []}],
                "parameters": [_path_param("job_id", "The `job_…` id."), _param("RequestId")],
                "responses": {"200": _ok(ref("Job"), "The job."), **_errors((401, 403, 404, 500, 503))},
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApiDocument",
                "tags": ["Meta"],
                "summary": "This document",
                "security": [],
                "parameters": [_param("RequestId")],
                "responses": {
                    "200": _ok({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1."),
                    **_errors((500,)),
                },
            }
        },
    }


def _schemas() -> dict[str, Schema]:
    derived = _derived_schemas()
    written = {**_error_schemas(), **_RESPONSE_OBJECTS}
    clash = derived.keys() & written.keys()
    if clash:  # a new pydantic model must not silently replace a response shape
        raise RuntimeError(f"schema names used twice in the OpenAPI document: {sorted(clash)}")
    return {**written, **derived}


def build() -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Private inference API",
            "version": API_VERSION,
            "description": "OpenAI- and Anthropic-compatible inference on attested nodes, billed exactly from a "
            "prepaid balance. Every error but those of /v1/messages is `{\"error\": {type, code, message, "
            "request_id, param?}}`; paid requests may carry an Idempotency-Key.",
        },
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
        "tags": [{"name": n} for n in ("OpenAI", "Anthropic", "Streams", "Jobs", "Management", "Nodes", "Sealed", "Meta")],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A secret (`sk_live_…`) or publishable (`pk_live_…`) key.",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "nodeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A node operator's token (`nt_live_…`); API keys are refused (403).",
                },
            },
            "schemas": _schemas(),
            "responses": _error_responses(),
            "parameters": _PARAMETERS,
            "headers": _HEADERS,
        },
    }


@cache
def document_bytes() -> bytes:
    return orjson.dumps(build())


async def openapi_json(req: ApiRequest):
    return json_response(req, document_bytes())
