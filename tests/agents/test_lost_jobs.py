"""Paid jobs that can no longer end by themselves are failed (their holds lapse and are voided)."""
from __future__ import annotations

import datetime as dt

from django.utils import timezone

from nodes.jobs import job_create
from nodes.models import Job
from nodes.paidjobs import jobs_fail_lost


def test_jobs_lost_by_their_worker_or_the_broker_are_failed(alice, settings):
    now = timezone.now()
    long_ago = now - dt.timedelta(seconds=settings.JOB_MAX_SECONDS + settings.JOB_HOLD_MARGIN_SECONDS + 5)
    running_lost = job_create(kind=Job.Kind.AGENT_RUN, project=alice.project)
    running_alive = job_create(kind=Job.Kind.IMAGE, project=alice.project)
    queued_lost = job_create(kind=Job.Kind.IMAGE, project=alice.project)
    queued_waiting = job_create(kind=Job.Kind.IMAGE, project=alice.project)
    pull = job_create(kind=Job.Kind.MODEL_PULL, operator=alice.organization)  # not a paid job: left alone
    Job.objects.filter(id__in=[running_lost.id, pull.id]).update(status="running", started_at=long_ago)
    Job.objects.filter(id=running_alive.id).update(status="running", started_at=now)
    queued_before = now - dt.timedelta(seconds=settings.RESERVATION_TIMEOUT_SECONDS + settings.JOB_HOLD_MARGIN_SECONDS + 5)
    Job.objects.filter(id=queued_lost.id).update(created_at=queued_before)
    assert jobs_fail_lost(now=now) == 2
    status = dict(Job.objects.values_list("id", "status"))
    assert status == {running_lost.id: "failed", running_alive.id: "running", queued_lost.id: "failed",
                      queued_waiting.id: "queued", pull.id: "running"}
    assert Job.objects.get(id=running_lost.id).error_message.startswith("The job was lost")
