"""Envelope encryption of bodies at rest (gateway.vault, config.envelope): binding, rotation,
crypto-shred, retention, the master key providers, and Web Chat text sealed in its columns."""
from __future__ import annotations

import base64
import datetime as dt
import io
import os

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from config import envelope
from config.envelope import DecryptionError, KeyUnavailable
from gateway import vault
from gateway.models import BodyBlob, ProjectKey
from tests.conftest import make_tenant

pytestmark = pytest.mark.django_db(transaction=True)


def keyring(*versions: int) -> tuple[str, dict[int, bytes]]:
    keys = {v: os.urandom(32) for v in versions}
    return ",".join(f"{v}:{base64.b64encode(k).decode()}" for v, k in sorted(keys.items(), reverse=True)), keys


@pytest.fixture(autouse=True)
def _fresh_provider():
    envelope.reset()
    vault._kek_cache.clear()
    yield
    envelope.reset()
    vault._kek_cache.clear()


def store(tenant, ref="req_1", kind="request", text=b"hello secret", **kw):
    return vault.body_store(project=tenant.project, owner="request", ref=ref, kind=kind, plaintext=text, **kw)


def test_round_trip_fresh_data_key_and_nonce_per_blob():
    alice = make_tenant("alice")
    a = store(alice, "req_1")
    b = store(alice, "req_2")
    assert vault.body_open(a) == b"hello secret" and vault.body_open(b) == b"hello secret"
    assert bytes(a.ciphertext) != bytes(b.ciphertext) and bytes(a.nonce) != bytes(b.nonce)
    assert len(bytes(a.nonce)) == 12
    assert b"hello secret" not in bytes(a.ciphertext)
    # one project key, stored wrapped only
    (key,) = ProjectKey.objects.filter(project=alice.project)
    assert key.version == 1 and len(bytes(key.wrapped_key)) == 12 + 32 + 16


def test_a_blob_moved_to_another_row_or_tenant_does_not_open():
    alice, charlie = make_tenant("alice"), make_tenant("charlie")
    blob = store(alice, "req_1")
    other = store(alice, "req_2", text=b"other")

    # another row of the same project: its ciphertext copied over
    other.wrapped_key, other.nonce, other.ciphertext = blob.wrapped_key, blob.nonce, blob.ciphertext
    other.save()
    with pytest.raises(DecryptionError):
        vault.body_open(BodyBlob.objects.get(id=other.id))
    # the same row said to be the response instead of the request
    blob.kind = "response"
    with pytest.raises(DecryptionError):
        vault.body_open(blob)
    blob.kind = "request"
    # moved to another tenant (their project; same version number of their own key)
    store(charlie, "req_x")
    moved = BodyBlob.objects.get(id=blob.id)
    moved.project_id, moved.organization_id = charlie.project.id, charlie.organization.id
    with pytest.raises(DecryptionError):
        vault.body_open(moved)
    # a project key moved to another project does not unwrap either
    ka = ProjectKey.objects.get(project=alice.project)
    ProjectKey.objects.filter(project=charlie.project).update(wrapped_key=ka.wrapped_key)
    with pytest.raises(DecryptionError):
        vault.project_key(organization_id=charlie.organization.id, project_id=charlie.project.id, version=1)
    assert vault.body_open(BodyBlob.objects.get(id=blob.id)) == b"hello secret"


def test_crypto_shred_makes_every_blob_and_chat_text_unreadable():
    from console import chat_store
    from console.models import Conversation

    alice, charlie = make_tenant("alice"), make_tenant("charlie")
    blob = store(alice)
    theirs = store(charlie)
    conversation = Conversation.objects.create(user=alice.user, project=alice.project, model="sim-small")
    message = chat_store.message_write(conversation=conversation, role="user", text="my diary")
    assert vault.project_key_destroy(alice.project) == 1
    with pytest.raises(vault.BodyUnavailable) as exc:
        vault.body_open(BodyBlob.objects.get(id=blob.id))
    assert exc.value.reason == "shredded" and "destroyed" in str(exc.value)
    message.refresh_from_db()
    message.conversation = conversation
    assert chat_store.message_text(message) == chat_store.UNREADABLE
    assert ProjectKey.objects.get(project=alice.project).wrapped_key is None
    assert vault.body_open(theirs) == b"hello secret"  # other tenants untouched
    # new writes get a fresh key version, old blobs stay shredded
    fresh = store(alice, "req_new", text=b"after")
    assert fresh.kek_version == 2 and vault.body_open(fresh) == b"after"


def test_crypto_shred_command_also_deletes_platform_sealed_answers():
    from gateway.models import IdempotencyRecord, StoredResponse

    alice, charlie = make_tenant("alice"), make_tenant("charlie")
    blob = store(alice)
    now = timezone.now()
    for tenant in (alice, charlie):
        StoredResponse.objects.create(public_id=f"resp_{tenant.project.id}", project=tenant.project, request_id="r",
                                      created_at=now, body=b"sealed")
        IdempotencyRecord.objects.create(project=tenant.project, key="k", body_hash="h", request_id="r",
                                         status="completed", response=b"sealed", created_at=now, expires_at=now)
    with pytest.raises(Exception, match="--yes"):
        call_command("crypto_shred", alice.project.public_id, stdout=io.StringIO())
    assert vault.body_open(blob) == b"hello secret"
    out = io.StringIO()
    call_command("crypto_shred", alice.project.public_id, "--yes", stdout=out)
    assert "1 key version(s) destroyed" in out.getvalue()
    with pytest.raises(vault.BodyUnavailable):
        vault.body_open(BodyBlob.objects.get(id=blob.id))
    assert list(StoredResponse.objects.values_list("project_id", flat=True)) == [charlie.project.id]
    assert list(IdempotencyRecord.objects.values_list("project_id", flat=True)) == [charlie.project.id]


def test_master_rotation_while_reading_then_old_master_removed(monkeypatch):
    """A new master version is added; rotate_keys --master re-wraps the project keys in another
    thread (batches of 1) while this one keeps opening every blob; then the old version leaves the
    environment and everything still opens."""
    import threading
    import time

    from django.db import connection

    tenants = [make_tenant(name) for name in ("alice", "bob", "charlie", "dave")]
    old, _ = keyring(1)
    with override_settings(MASTER_KEYS=old):
        blobs = [store(t, f"req_{i}", text=f"{t.user.username} {i}".encode()) for t in tenants for i in range(2)]
    blob_texts = {b.id: f"{t.user.username} {i}".encode() for b, (t, i) in zip(blobs, [(t, i) for t in tenants for i in range(2)])}
    both = ",".join([f"2:{base64.b64encode(os.urandom(32)).decode()}", old])
    with override_settings(MASTER_KEYS=both):
        vault._kek_cache.clear()
        real_wrap = envelope.LocalKeyring.wrap

        def slow_wrap(self, *args):
            time.sleep(0.05)
            return real_wrap(self, *args)

        monkeypatch.setattr(envelope.LocalKeyring, "wrap", slow_wrap)
        out = io.StringIO()

        def rotate():
            try:
                call_command("rotate_keys", "--master", "--batch", "1", stdout=out)
            finally:
                connection.close()

        thread = threading.Thread(target=rotate)
        thread.start()
        seen = set()
        while thread.is_alive():
            seen.add(tuple(sorted(set(ProjectKey.objects.values_list("master_version", flat=True)))))
            for blob in blobs:
                assert vault.body_open(BodyBlob.objects.get(id=blob.id)) == bytes(blob_texts[blob.id])
        thread.join()
        monkeypatch.setattr(envelope.LocalKeyring, "wrap", real_wrap)
        assert "4 project key(s) re-wrapped under master version 2" in out.getvalue()
        assert (1, 2) in seen  # read while half re-wrapped
        assert set(ProjectKey.objects.values_list("master_version", flat=True)) == {2}
        call_command("rotate_keys", "--master", stdout=out)  # resumable: nothing left to do
        assert "master: 0 project key(s)" in out.getvalue()
    only_new = both.split(",")[0]
    with override_settings(MASTER_KEYS=only_new):
        vault._kek_cache.clear()
        assert [vault.body_open(BodyBlob.objects.get(id=b.id)) for b in blobs] == [
            f"{t.user.username} {i}".encode() for t in tenants for i in range(2)]
    # and with only the old version, nothing opens: the keys really moved
    with override_settings(MASTER_KEYS=old), pytest.raises(KeyUnavailable):
        vault.body_open(BodyBlob.objects.get(id=blobs[0].id))


def test_project_rotation_while_reading(monkeypatch):
    """Rotate a project's key online (another thread, batches of 1) while this thread keeps
    reading every blob: every read succeeds, with old and new versions side by side, and at the
    end every data key (and the Web Chat text) is under the new version."""
    import threading
    import time

    from django.db import connection

    from console import chat_store
    from console.models import Conversation

    alice = make_tenant("alice")
    blobs = [store(alice, f"req_{i}", text=f"body {i}".encode()) for i in range(8)]
    conversation = Conversation.objects.create(user=alice.user, project=alice.project, model="sim-small")
    message = chat_store.message_write(conversation=conversation, role="user", text="rotate me")
    assert vault.project_key_rotate(alice.project) == 2
    real = envelope.rewrap_dek

    def slow(*args):
        time.sleep(0.03)
        return real(*args)

    monkeypatch.setattr(envelope, "rewrap_dek", slow)
    result = {}

    def rotate():
        try:
            result["n"] = vault.rewrap_project(alice.project, batch=1)
        finally:
            connection.close()

    thread = threading.Thread(target=rotate)
    thread.start()
    seen: set[tuple[int, ...]] = set()
    reads = 0
    while thread.is_alive():
        rows = {b.id: b for b in BodyBlob.objects.filter(project=alice.project)}
        seen.add(tuple(sorted({b.kek_version for b in rows.values()})))
        for i, blob in enumerate(blobs):
            assert vault.body_open(rows[blob.id]) == f"body {i}".encode()
            reads += 1
    thread.join()
    assert result["n"] == 8 + 1 and reads > 8
    assert (1, 2) in seen  # read while half rotated
    assert set(BodyBlob.objects.filter(project=alice.project).values_list("kek_version", flat=True)) == {2}
    message.refresh_from_db()
    message.conversation = conversation
    assert envelope.unpack(message.content)[0] == 2 and chat_store.message_text(message) == "rotate me"
    monkeypatch.setattr(envelope, "rewrap_dek", real)
    # the command does the same, and --resume finishes a rotation without a new version
    out = io.StringIO()
    call_command("rotate_keys", "--project", alice.project.public_id, stdout=out)
    assert "key version 3, 9 data key(s) re-wrapped" in out.getvalue()
    call_command("rotate_keys", "--project", "all", "--resume", stdout=out)
    assert "key version 3, 0 data key(s) re-wrapped" in out.getvalue()


def test_interrupted_project_rotation_is_resumed_and_old_versions_keep_opening(monkeypatch):
    alice = make_tenant("alice")
    blobs = [store(alice, f"req_{i}", text=f"body {i}".encode()) for i in range(5)]
    vault.project_key_rotate(alice.project)
    calls = {"n": 0}
    real = envelope.rewrap_dek

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed mid-rotation")
        return real(*args)

    monkeypatch.setattr(envelope, "rewrap_dek", flaky)
    with pytest.raises(RuntimeError):
        vault.rewrap_project(alice.project, batch=2)
    versions = sorted(BodyBlob.objects.filter(project=alice.project).values_list("kek_version", flat=True))
    assert versions == [1, 1, 1, 2, 2]  # the first batch committed, the second rolled back
    for i, blob in enumerate(blobs):
        assert vault.body_open(BodyBlob.objects.get(id=blob.id)) == f"body {i}".encode()
    monkeypatch.setattr(envelope, "rewrap_dek", real)
    assert vault.rewrap_project(alice.project, batch=2) == 3


def test_retention_task_deletes_expired_bodies_only():
    from gateway.tasks import purge_expired_bodies

    alice = make_tenant("alice")
    now = timezone.now()
    expired = store(alice, "req_old", expires_at=now - dt.timedelta(seconds=1))
    soon = store(alice, "req_soon", expires_at=now + dt.timedelta(hours=1))
    forever = store(alice, "req_forever")
    with pytest.raises(vault.BodyUnavailable) as exc:  # past its time it is not shown even before the purge
        vault.body_open(expired)
    assert exc.value.reason == "expired"
    assert purge_expired_bodies.apply().get() == 1
    assert set(BodyBlob.objects.values_list("ref", flat=True)) == {"req_soon", "req_forever"}
    assert vault.bodies_purge_expired(now=now + dt.timedelta(hours=2)) == 1
    assert list(BodyBlob.objects.values_list("id", flat=True)) == [forever.id]
    assert soon.id != forever.id


def test_beat_schedule_runs_the_purge():
    from django.conf import settings

    from config.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["purge-expired-bodies"]
    assert entry["task"] == "gateway.tasks.purge_expired_bodies"
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks


def test_file_provider_and_bad_configuration(tmp_path):
    text, _ = keyring(3, 1)
    path = tmp_path / "master.keys"
    path.write_text("# master keys\n" + text.replace(",", "\n"))
    with override_settings(MASTER_KEY_PROVIDER="file", MASTER_KEY_FILE=str(path)):
        provider = envelope.master()
        assert provider.current_version == 3 and provider.versions() == [3, 1]
        alice = make_tenant("alice")
        blob = store(alice)
        assert ProjectKey.objects.get(project=alice.project).master_version == 3
        assert vault.body_open(blob) == b"hello secret"
    from django.core.exceptions import ImproperlyConfigured

    for bad in ("x:abc", "1:not-base64!", f"0:{base64.b64encode(os.urandom(32)).decode()}",
                f"1:{base64.b64encode(os.urandom(16)).decode()}"):
        envelope.reset()
        with override_settings(MASTER_KEYS=bad), pytest.raises(ImproperlyConfigured):
            envelope.master()


class FakeKms:
    """Stands in for a KMS: keys it never hands out."""

    def __init__(self):
        self.keys = {"kms-key-a": os.urandom(32)}

    def encrypt(self, key_id, plaintext, aad):
        return envelope.aead_seal(self.keys[key_id], plaintext, aad)

    def decrypt(self, key_id, ciphertext, aad):
        return envelope.aead_open(self.keys[key_id], ciphertext, aad)


kms = FakeKms()


class FakeKmsProvider(envelope.KmsMasterKeyProvider):
    def __init__(self):
        super().__init__(kms, {1: "kms-key-a"}, {1: kms.encrypt("kms-key-a", os.urandom(32), b"derivation-secret")})


def test_a_kms_provider_plugs_in_by_dotted_path():
    with override_settings(MASTER_KEY_PROVIDER="tests.privacy.test_vault.FakeKmsProvider"):
        alice = make_tenant("alice")
        blob = store(alice)
        assert vault.body_open(blob) == b"hello secret"
        assert len(envelope.master().derive(1, "stream:x")) == 32
    # the KEK really is wrapped by the "KMS": the default provider cannot unwrap it
    envelope.reset()
    with pytest.raises(DecryptionError):
        vault.body_open(BodyBlob.objects.get(id=blob.id))


def test_webchat_text_is_encrypted_and_bound_to_its_row():
    from console import chat_store
    from console.models import Conversation, Message

    alice = make_tenant("alice")
    conversation = Conversation.objects.create(user=alice.user, project=alice.project, model="sim-small")
    chat_store.title_write(conversation, "Secret   plans for Q3")
    conversation.save(update_fields=["title"])
    first = chat_store.message_write(conversation=conversation, role="user", text="first secret")
    second = chat_store.message_write(conversation=conversation, role="user", text="second secret")
    reply, created = chat_store.reply_write(conversation=conversation, turn_id="turn_1", text="the answer")
    again, created_again = chat_store.reply_write(conversation=conversation, turn_id="turn_1", text="other")
    assert created and not created_again and again.id == reply.id
    rows = {m.id: m.content for m in Message.objects.all()}
    assert all(envelope.is_packed(v) and "secret" not in v and "answer" not in v for v in rows.values())
    conversation.refresh_from_db()
    assert "Secret" not in conversation.title and chat_store.title_text(conversation) == "Secret plans for Q3"
    for message, text in ((first, "first secret"), (second, "second secret"), (reply, "the answer")):
        fresh = Message.objects.get(id=message.id)
        fresh.conversation = conversation
        assert chat_store.message_text(fresh) == text
    # a ciphertext copied onto another message does not open
    Message.objects.filter(id=second.id).update(content=rows[first.id])
    moved = Message.objects.get(id=second.id)
    moved.conversation = conversation
    with pytest.raises(DecryptionError):
        chat_store.message_text(moved)


def test_the_gateway_writer_batches_concurrent_requests_and_they_open():
    """store_request_bodies (the gateway's async writer, raw SQL) gathers concurrent requests'
    blobs into one round trip; each opens with the sync reader, bound to its own request."""
    import asyncio
    from types import SimpleNamespace

    from config import asyncdb
    from tests.conftest import run_async

    alice = make_tenant("alice")
    key = SimpleNamespace(organization_id=alice.organization.id, project_id=alice.project.id,
                          store_bodies="days", body_retention_days=7)
    runs = []
    real_run = asyncdb.run

    async def counting(*stmts):
        runs.append(len(stmts))
        return await real_run(*stmts)

    async def go():
        asyncdb.run = counting
        try:
            await asyncio.gather(*(
                vault.store_request_bodies(key=key, request_id=f"req_{i}", request=f"q{i}".encode(), response=f"a{i}".encode())
                for i in range(10)
            ))
            await vault.bodies_flushed()
        finally:
            asyncdb.run = real_run

    run_async(go())
    blob_runs = [n for n in runs if n == 20]
    assert blob_runs == [20], runs  # 10 requests × 2 blobs, one round trip
    for i in range(10):
        for kind, text in (("request", f"q{i}"), ("response", f"a{i}")):
            blob = BodyBlob.objects.get(project=alice.project, ref=f"req_{i}", kind=kind)
            assert vault.body_open(blob) == text.encode()
            assert dt.timedelta(days=6) < blob.expires_at - timezone.now() <= dt.timedelta(days=7)
