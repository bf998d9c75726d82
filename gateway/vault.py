"""Encrypted bodies at rest: project keys, body blobs, rotation and crypto-shred.

The crypto is config.envelope; this module keeps the keys and blobs (gateway.ProjectKey,
gateway.BodyBlob) and is the only code that writes them.

* ``body_store`` / ``body_open``: one blob in, one blob out (sync, ORM: console, Web Chat,
  Celery, the management command).
* ``store_request_bodies``: the gateway's writer, async over config.asyncdb raw SQL and
  run in the background after settlement, never on the response path. Unwrapped project
  keys are cached in the process for ``KEK_CACHE_SECONDS``.
* ``project_key_destroy``: crypto-shred; the project's KEKs are erased, its blobs stay
  and fail to open with :class:`BodyUnavailable` ("shredded").
* ``rewrap_master`` / ``rotate_project``: the batched, resumable steps behind
  ``manage.py rotate_keys``.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
import weakref

from django.db import IntegrityError, transaction
from django.utils import timezone

from config import asyncdb, bus, envelope
from config.asyncdb import Stmt
from config.envelope import DecryptionError, KeyUnavailable
from console.services import PROJECT_TOPIC

from . import background
from .models import BodyBlob, ProjectKey

log = logging.getLogger(__name__)

KEK_CACHE_SECONDS = 60.0
NEVER, DAYS, FOREVER = "never", "days", "forever"


class BodyUnavailable(Exception):
    """A body that cannot be shown: ``reason`` is "not_kept", "expired" or "shredded"."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- project keys -------------------------------------------------------------------


def _unwrap_kek(*, organization_id: int, project_id: int, version: int, master_version: int, wrapped) -> bytes:
    if wrapped is None:
        raise KeyUnavailable(f"project key version {version} was destroyed")
    aad = envelope.kek_aad(
        organization_id=organization_id, project_id=project_id, version=version, master_version=master_version
    )
    return envelope.master().unwrap(master_version, bytes(wrapped), aad)


def _new_wrapped_kek(*, organization_id: int, project_id: int, version: int) -> tuple[bytes, bytes, int]:
    """(kek, wrapped kek, master version) for a new project key version."""
    provider = envelope.master()
    mv = provider.current_version
    kek = os.urandom(envelope.KEY)
    aad = envelope.kek_aad(organization_id=organization_id, project_id=project_id, version=version, master_version=mv)
    return kek, provider.wrap(mv, kek, aad), mv


def project_key_current(project) -> tuple[int, bytes]:
    """(version, KEK) the project encrypts new blobs under; creates version 1 (or the next
    after a shred) on first use."""
    for _ in range(3):
        row = (
            ProjectKey.objects.filter(project_id=project.id, destroyed_at__isnull=True)
            .order_by("-version").first()
        )
        if row is not None:
            return row.version, _unwrap_kek(
                organization_id=project.organization_id, project_id=project.id, version=row.version,
                master_version=row.master_version, wrapped=row.wrapped_key,
            )
        last = ProjectKey.objects.filter(project_id=project.id).order_by("-version").values_list("version", flat=True).first()
        version = (last or 0) + 1
        kek, wrapped, mv = _new_wrapped_kek(organization_id=project.organization_id, project_id=project.id, version=version)
        try:
            with transaction.atomic():
                ProjectKey.objects.create(
                    project_id=project.id, version=version, wrapped_key=wrapped, master_version=mv, created_at=timezone.now()
                )
            return version, kek
        except IntegrityError:  # another writer created it first: use theirs
            continue
    raise RuntimeError("could not create a project key")


def project_key(*, organization_id: int, project_id: int, version: int) -> bytes:
    row = ProjectKey.objects.filter(project_id=project_id, version=version).first()
    if row is None:
        raise KeyUnavailable(f"project key version {version} does not exist")
    return _unwrap_kek(
        organization_id=organization_id, project_id=project_id, version=version,
        master_version=row.master_version, wrapped=row.wrapped_key,
    )


def project_key_destroy(project) -> int:
    """Crypto-shred: erase every version of the project's KEK. Its blobs (request bodies,
    Web Chat text) can never be opened again. The answers sealed under the platform's key
    rather than the project's (stored Responses, idempotent replays: config.crypto) are
    deleted in the same transaction. Returns the number of key versions destroyed."""
    from .models import IdempotencyRecord, StoredResponse

    with transaction.atomic():
        n = ProjectKey.objects.filter(project_id=project.id, destroyed_at__isnull=True).update(
            wrapped_key=None, destroyed_at=timezone.now()
        )
        StoredResponse.objects.filter(project_id=project.id).delete()
        IdempotencyRecord.objects.filter(project_id=project.id, status=IdempotencyRecord.Status.COMPLETED).delete()
        transaction.on_commit(lambda: bus.publish(PROJECT_TOPIC, str(project.id)))
    _kek_cache.pop(project.id, None)
    log.warning("project %s: %d key version(s) destroyed (crypto-shred)", project.public_id, n)
    return n


def _shredded(project_id: int, version: int) -> bool:
    return ProjectKey.objects.filter(project_id=project_id, version=version, destroyed_at__isnull=False).exists()


# --- one blob (sync) ------------------------------------------------------------------------


def _aad(*, organization_id: int, project_id: int, owner: str, ref: str, kind: str) -> bytes:
    return envelope.blob_aad(organization_id=organization_id, project_id=project_id, owner=owner, ref=str(ref), kind=kind)


def body_store(*, project, owner: str, ref: str, kind: str, plaintext: bytes, expires_at: dt.datetime | None = None) -> BodyBlob:
    """Encrypt and keep one body (replacing the blob of that owner/kind, if any)."""
    version, kek = project_key_current(project)
    aad = _aad(organization_id=project.organization_id, project_id=project.id, owner=owner, ref=ref, kind=kind)
    wrapped, nonce, ciphertext = envelope.encrypt(kek, version, plaintext, aad)
    blob, _ = BodyBlob.objects.update_or_create(
        project_id=project.id, owner=owner, ref=str(ref), kind=kind,
        defaults={
            "organization_id": project.organization_id, "kek_version": version, "wrapped_key": wrapped,
            "nonce": nonce, "ciphertext": ciphertext, "created_at": timezone.now(), "expires_at": expires_at,
        },
    )
    return blob


def body_open(blob: BodyBlob) -> bytes:
    """The plaintext of ``blob``; BodyUnavailable("expired"/"shredded") when it cannot be."""
    if blob.expires_at is not None and blob.expires_at <= timezone.now():
        raise BodyUnavailable("expired", "This body passed the project's retention time and is deleted.")
    aad = _aad(organization_id=blob.organization_id, project_id=blob.project_id, owner=blob.owner, ref=blob.ref, kind=blob.kind)
    try:
        kek = project_key(organization_id=blob.organization_id, project_id=blob.project_id, version=blob.kek_version)
    except KeyUnavailable as exc:
        if _shredded(blob.project_id, blob.kek_version):
            raise BodyUnavailable("shredded", "The project's key was destroyed: this body can never be read.") from exc
        raise
    return envelope.decrypt(kek, blob.kek_version, bytes(blob.wrapped_key), bytes(blob.nonce), bytes(blob.ciphertext), aad)


SHOWN_BYTES = 64 * 1024


def request_bodies(*, project, records) -> dict[str, dict[str, str | BodyUnavailable]]:
    """For the console's request log: {request_id: {"request": text | BodyUnavailable, "response": …}}
    for ``records`` of ``project`` (one query for the blobs, one unwrap per key version)."""
    wanted = [r.request_id for r in records if r.bodies_kept]
    blobs: dict[tuple[str, str], BodyBlob] = {
        (b.ref, b.kind): b
        for b in BodyBlob.objects.filter(project_id=project.id, owner=BodyBlob.Owner.REQUEST, ref__in=wanted)
    }
    keks: dict[int, bytes | KeyUnavailable] = {}
    now = timezone.now()
    out: dict[str, dict[str, str | BodyUnavailable]] = {}
    for record in records:
        bodies: dict[str, str | BodyUnavailable] = {}
        for kind in (BodyBlob.Kind.REQUEST, BodyBlob.Kind.RESPONSE):
            if not record.bodies_kept:
                bodies[kind] = BodyUnavailable("not_kept", "Not kept: the project did not keep bodies for this request.")
                continue
            blob = blobs.get((record.request_id, kind))
            if blob is None or (blob.expires_at is not None and blob.expires_at <= now):
                bodies[kind] = BodyUnavailable("expired", "Expired: deleted at the end of the project's retention time.")
                continue
            kek = keks.get(blob.kek_version)
            if kek is None:
                try:
                    kek = project_key(organization_id=project.organization_id, project_id=project.id, version=blob.kek_version)
                except KeyUnavailable as exc:
                    kek = exc
                keks[blob.kek_version] = kek
            if isinstance(kek, KeyUnavailable):
                bodies[kind] = BodyUnavailable("shredded", "Shredded: the project's key was destroyed; this body can never be read.")
                continue
            aad = _aad(organization_id=blob.organization_id, project_id=blob.project_id, owner=blob.owner, ref=blob.ref, kind=blob.kind)
            try:
                plain = envelope.decrypt(kek, blob.kek_version, bytes(blob.wrapped_key), bytes(blob.nonce), bytes(blob.ciphertext), aad)
            except DecryptionError:
                log.error("body %s of request %s failed to decrypt", kind, record.request_id)
                bodies[kind] = BodyUnavailable("unreadable", "This body failed to decrypt.")
                continue
            text = plain[:SHOWN_BYTES].decode("utf-8", errors="replace")
            if len(plain) > SHOWN_BYTES:
                text += f"\n… ({len(plain) - SHOWN_BYTES} more bytes not shown)"
            bodies[kind] = text
        out[record.request_id] = bodies
    return out


# --- a text column (Web Chat) ----------------------------------------------------------------


def text_seal(*, project, owner: str, ref: str, kind: str, text: str) -> str:
    """``text`` encrypted as one column value (config.envelope.pack), bound like a blob."""
    version, kek = project_key_current(project)
    aad = _aad(organization_id=project.organization_id, project_id=project.id, owner=owner, ref=ref, kind=kind)
    return envelope.pack(version, *envelope.encrypt(kek, version, text.encode(), aad))


def text_open(*, project, owner: str, ref: str, kind: str, stored: str) -> str:
    if not envelope.is_packed(stored):
        return stored  # written before encryption was on
    version, wrapped, nonce, ciphertext = envelope.unpack(stored)
    aad = _aad(organization_id=project.organization_id, project_id=project.id, owner=owner, ref=ref, kind=kind)
    try:
        kek = project_key(organization_id=project.organization_id, project_id=project.id, version=version)
    except KeyUnavailable as exc:
        if _shredded(project.id, version):
            raise BodyUnavailable("shredded", "The project's key was destroyed: this text can never be read.") from exc
        raise
    return envelope.decrypt(kek, version, wrapped, nonce, ciphertext, aad).decode()


# --- the gateway's writer (async, off the response path) ----------------------------------

_kek_cache: dict[int, tuple[int, bytes, float]] = {}


def _drop_cached(project_id: str | None) -> None:
    if project_id is None:
        _kek_cache.clear()
    else:
        _kek_cache.pop(int(project_id), None)


bus.on(PROJECT_TOPIC, _drop_cached)

_CURRENT_SQL = """
SELECT version, wrapped_key, master_version FROM gateway_projectkey
WHERE project_id = %(project_id)s AND destroyed_at IS NULL ORDER BY version DESC LIMIT 1
"""
_LAST_SQL = "SELECT COALESCE(MAX(version), 0) FROM gateway_projectkey WHERE project_id = %(project_id)s"
_INSERT_KEY = """
INSERT INTO gateway_projectkey (project_id, version, wrapped_key, master_version, created_at)
VALUES (%(project_id)s, %(version)s, %(wrapped_key)s, %(master_version)s, %(created_at)s)
ON CONFLICT (project_id, version) DO NOTHING
"""
_INSERT_BLOB = """
INSERT INTO gateway_bodyblob (organization_id, project_id, owner, ref, kind, kek_version, wrapped_key, nonce,
                              ciphertext, created_at, expires_at)
VALUES (%(organization_id)s, %(project_id)s, %(owner)s, %(ref)s, %(kind)s, %(kek_version)s, %(wrapped_key)s,
        %(nonce)s, %(ciphertext)s, %(created_at)s, %(expires_at)s)
ON CONFLICT (project_id, owner, ref, kind) DO NOTHING
"""


async def _current_kek_async(*, organization_id: int, project_id: int) -> tuple[int, bytes]:
    cached = _kek_cache.get(project_id)
    if cached is not None and time.monotonic() < cached[2]:
        return cached[0], cached[1]
    for _ in range(3):
        row = await asyncdb.fetch_one(_CURRENT_SQL, {"project_id": project_id})
        if row is not None:
            version, kek = row[0], _unwrap_kek(
                organization_id=organization_id, project_id=project_id, version=row[0], master_version=row[2], wrapped=row[1]
            )
            break
        (last,) = await asyncdb.fetch_one(_LAST_SQL, {"project_id": project_id})
        version = int(last) + 1
        kek, wrapped, mv = _new_wrapped_kek(organization_id=organization_id, project_id=project_id, version=version)
        (result,) = await asyncdb.run(Stmt(_INSERT_KEY, {
            "project_id": project_id, "version": version, "wrapped_key": wrapped, "master_version": mv,
            "created_at": timezone.now(),
        }))
        if result.rowcount == 1:
            break
    else:
        raise RuntimeError("could not create a project key")
    _kek_cache[project_id] = (version, kek, time.monotonic() + KEK_CACHE_SECONDS)
    return version, kek


def expiry(store_bodies: str, retention_days: int, now: dt.datetime) -> dt.datetime | None:
    return now + dt.timedelta(days=retention_days) if store_bodies == DAYS else None


async def store_request_bodies(*, key, request_id: str, request: bytes, response: bytes | None) -> None:
    """Encrypt and insert a request's bodies (the caller spawns this after settlement)."""
    org, project = key.organization_id, key.project_id
    version, kek = await _current_kek_async(organization_id=org, project_id=project)
    now = timezone.now()
    expires_at = expiry(key.store_bodies, key.body_retention_days, now)
    stmts = []
    for kind, plaintext in ((BodyBlob.Kind.REQUEST, request), (BodyBlob.Kind.RESPONSE, response)):
        if plaintext is None:
            continue
        aad = _aad(organization_id=org, project_id=project, owner=BodyBlob.Owner.REQUEST, ref=request_id, kind=kind)
        wrapped, nonce, ciphertext = envelope.encrypt(kek, version, plaintext, aad)
        stmts.append(Stmt(_INSERT_BLOB, {
            "organization_id": org, "project_id": project, "owner": BodyBlob.Owner.REQUEST.value, "ref": request_id,
            "kind": kind.value, "kek_version": version, "wrapped_key": wrapped, "nonce": nonce,
            "ciphertext": ciphertext, "created_at": now, "expires_at": expires_at,
        }))
    if stmts:
        _writer().add(stmts)


BATCH_SECONDS = 0.02
BATCH_MAX = 200  # statements per round trip


class _BodyWriter:
    """Gathers the blob inserts of concurrent requests for BATCH_SECONDS and writes them in one
    round trip (measured: one round trip per request cost ~20% more gateway CPU per request)."""

    def __init__(self) -> None:
        self.pending: list[Stmt] = []
        self.task = None

    def add(self, stmts: list[Stmt]) -> None:
        self.pending.extend(stmts)
        if self.task is None or self.task.done():
            self.task = background.spawn(self._flush(), name="bodies:flush")

    async def _flush(self) -> None:
        while self.pending:
            await asyncio.sleep(BATCH_SECONDS)
            batch, self.pending = self.pending[:BATCH_MAX], self.pending[BATCH_MAX:]
            try:
                await asyncdb.run(*batch)
            except Exception:  # bodies are kept best-effort: the request is served and billed regardless
                log.exception("%d encrypted body blob(s) could not be stored", len(batch))


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BodyWriter] = weakref.WeakKeyDictionary()


def _writer() -> _BodyWriter:
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _BodyWriter()
    return writer


async def bodies_flushed() -> None:
    """Wait until this loop's pending blob inserts are written (tests, shutdown)."""
    writer = _writer()
    while writer.task is not None and not writer.task.done():
        await writer.task


# --- retention ------------------------------------------------------------------------------


def bodies_purge_expired(*, now: dt.datetime | None = None, batch: int = 1000) -> int:
    """Delete blobs past their expiry, in batches; returns how many."""
    now = now or timezone.now()
    total = 0
    while True:
        ids = list(BodyBlob.objects.filter(expires_at__lte=now).values_list("id", flat=True)[:batch])
        if not ids:
            return total
        deleted, _ = BodyBlob.objects.filter(id__in=ids).delete()
        total += deleted


# --- rotation (manage.py rotate_keys) --------------------------------------------------------


def rewrap_master(*, batch: int = 200) -> int:
    """Re-wrap every live project key not under the current master version; resumable (each
    batch commits on its own, and a key already re-wrapped is skipped). Returns how many."""
    provider = envelope.master()
    current = provider.current_version
    done = 0
    while True:
        with transaction.atomic():
            rows = list(
                ProjectKey.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(destroyed_at__isnull=True).exclude(master_version=current)
                .select_related("project").order_by("id")[:batch]
            )
            if not rows:
                return done
            for row in rows:
                org = row.project.organization_id
                kek = _unwrap_kek(organization_id=org, project_id=row.project_id, version=row.version,
                                  master_version=row.master_version, wrapped=row.wrapped_key)
                aad = envelope.kek_aad(organization_id=org, project_id=row.project_id, version=row.version, master_version=current)
                row.wrapped_key, row.master_version = provider.wrap(current, kek, aad), current
                row.save(update_fields=["wrapped_key", "master_version"])
            done += len(rows)


def project_key_rotate(project) -> int:
    """A new KEK version for ``project`` (new blobs use it at once in this process, elsewhere
    within KEK_CACHE_SECONDS or at the next invalidation). Returns the new version."""
    last = ProjectKey.objects.filter(project_id=project.id).order_by("-version").values_list("version", flat=True).first()
    version = (last or 0) + 1
    _, wrapped, mv = _new_wrapped_kek(organization_id=project.organization_id, project_id=project.id, version=version)
    with transaction.atomic():
        ProjectKey.objects.create(project_id=project.id, version=version, wrapped_key=wrapped, master_version=mv,
                                  created_at=timezone.now())
        transaction.on_commit(lambda: bus.publish(PROJECT_TOPIC, str(project.id)))
    _kek_cache.pop(project.id, None)
    return version


def rewrap_project(project, *, batch: int = 500) -> int:
    """Re-wrap the data keys of the project's blobs (and Web Chat texts) under its current KEK
    version. Batched and resumable; the old versions keep opening what is not yet done."""
    version, kek = project_key_current(project)
    org = project.organization_id
    keks: dict[int, bytes] = {}
    done = 0
    while True:
        with transaction.atomic():
            rows = list(
                BodyBlob.objects.select_for_update(skip_locked=True)
                .filter(project_id=project.id).exclude(kek_version=version).order_by("id")[:batch]
            )
            if not rows:
                break
            for blob in rows:
                old = keks.get(blob.kek_version)
                if old is None:
                    old = keks[blob.kek_version] = project_key(organization_id=org, project_id=project.id, version=blob.kek_version)
                aad = _aad(organization_id=org, project_id=project.id, owner=blob.owner, ref=blob.ref, kind=blob.kind)
                blob.wrapped_key = envelope.rewrap_dek(old, blob.kek_version, kek, version, bytes(blob.wrapped_key), aad)
                blob.kek_version = version
                blob.save(update_fields=["wrapped_key", "kek_version"])
            done += len(rows)
    # Web Chat texts are packed envelopes in their own columns
    from console import chat_store

    done += chat_store.rewrap(project, version=version, kek=kek, keks=keks, batch=batch)
    return done
