"""Key management and balance under /v1, for secret keys (Django REST framework).

Not on the hot path, so it uses the ORM and console/billing services directly.
Authentication and the error envelope are in gateway/drf.py.
"""
from __future__ import annotations

import datetime as dt
import re

from django.db import transaction
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import selectors as billing_selectors
from console import keys, selectors, services
from console.models import ApiKey

# Key ids are plain ASCII; anything else cannot name a key (and a NUL byte would
# make PostgreSQL refuse the query: a 500 instead of a 404).
_KEY_ID = re.compile(r"[A-Za-z0-9_]{1,40}")


def _key(request, key_id: str) -> ApiKey:
    if not _KEY_ID.fullmatch(key_id):
        raise ApiKey.DoesNotExist
    return selectors.key_in_project(request.auth.project_id, key_id)


def key_object(key: ApiKey, plaintext: str | None = None) -> dict:
    obj = {
        "id": key.public_id,
        "object": "api_key",
        "kind": key.kind,
        "name": key.name,
        "redacted": key.redacted,
        "status": key.status,
        "project": key.project.public_id,
        "created_at": int(key.created_at.timestamp()),
        "expires_at": int(key.expires_at.timestamp()) if key.expires_at else None,
        "revoked_at": int(key.revoked_at.timestamp()) if key.revoked_at else None,
        "rotated_from": key.rotated_from.public_id if key.rotated_from_id else None,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "monthly_spend_cap": key.monthly_spend_cap,
        "scopes": list(key.scopes),  # []: every endpoint
    }
    if plaintext is not None:
        obj["key"] = plaintext  # shown once
    return obj


MAX_RPM = 1_000_000
MAX_TPM = 10**12
MAX_SPEND_CAP = 10**15  # micro-units: a billion a month


class KeyLimits(serializers.Serializer):
    """A key's own limits; null removes one (the project's limits still apply)."""

    rpm_limit = serializers.IntegerField(min_value=1, max_value=MAX_RPM, required=False, allow_null=True)
    tpm_limit = serializers.IntegerField(min_value=1, max_value=MAX_TPM, required=False, allow_null=True)
    monthly_spend_cap = serializers.IntegerField(min_value=0, max_value=MAX_SPEND_CAP, required=False, allow_null=True)


class KeyCreate(KeyLimits):
    kind = serializers.ChoiceField(choices=[ApiKey.Kind.SECRET, ApiKey.Kind.PUBLISHABLE])  # Web Chat's is the system's
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=list(keys.SCOPES)), required=False, default=list)


class KeyRotate(serializers.Serializer):
    grace_seconds = serializers.IntegerField(min_value=0, max_value=int(services.MAX_GRACE.total_seconds()), default=3600)


class KeyList(APIView):
    def get(self, request):
        project = request.auth.project
        return Response({"object": "list", "data": [key_object(k) for k in selectors.keys_for_project(project)]})

    def post(self, request):
        form = KeyCreate(data=request.data)
        form.is_valid(raise_exception=True)
        key, plaintext = services.api_key_create(project=request.auth.project, **form.validated_data)
        return Response(key_object(key, plaintext), status=status.HTTP_201_CREATED)


class KeyDetail(APIView):
    def get(self, request, key_id: str):
        return Response(key_object(_key(request, key_id)))

    def patch(self, request, key_id: str):
        """Change the key's limits or cap: only the fields sent; null clears one."""
        form = KeyLimits(data=request.data)
        form.is_valid(raise_exception=True)
        changes = form.validated_data
        key = _key(request, key_id)
        with transaction.atomic():
            if "rpm_limit" in changes or "tpm_limit" in changes:
                services.api_key_limits_set(
                    key=key,
                    rpm_limit=changes.get("rpm_limit", key.rpm_limit),
                    tpm_limit=changes.get("tpm_limit", key.tpm_limit),
                )
            if "monthly_spend_cap" in changes:
                services.api_key_spend_cap_set(key=key, monthly_spend_cap=changes["monthly_spend_cap"])
        return Response(key_object(key))

    post = patch  # OpenAI-style clients modify with POST

    def delete(self, request, key_id: str):
        key = services.api_key_revoke(key=_key(request, key_id))
        return Response(key_object(key))


class KeyRotateView(APIView):
    def post(self, request, key_id: str):
        form = KeyRotate(data=request.data)
        form.is_valid(raise_exception=True)
        old = _key(request, key_id)
        new, plaintext = services.api_key_rotate(key=old, grace=dt.timedelta(seconds=form.validated_data["grace_seconds"]))
        old.refresh_from_db()
        return Response({**key_object(new, plaintext), "previous": key_object(old)}, status=status.HTTP_201_CREATED)


class BalanceView(APIView):
    def get(self, request):
        balance = billing_selectors.balance_for_organization(organization_id=request.auth.project.organization_id)
        return Response(
            {
                "object": "balance",
                "currency": balance.currency,
                "balance_micros": balance.balance,
                "reserved_micros": balance.reserved,
                "available_micros": balance.available,
            }
        )
