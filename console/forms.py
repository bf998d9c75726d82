"""Console forms: input checking for project settings and keys (the writes are in services)."""
from __future__ import annotations

import datetime as dt
import re

from django import forms
from django.utils import timezone

from billing.topups import TopupError, parse_amount

from . import keys
from .models import ApiKey, Project

MAX_ORIGINS = 50
# An origin exactly as a browser sends it: scheme://host[:port], no path, no trailing slash.
_ORIGIN = re.compile(
    r"^(?P<scheme>https?)://(?P<host>[a-z0-9](?:[a-z0-9-]{0,62})(?:\.[a-z0-9](?:[a-z0-9-]{0,62}))*|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


def parse_origins(text: str) -> list[str]:
    """One origin per line (or comma-separated) → a sorted list; ValidationError naming the bad one."""
    seen: list[str] = []
    for raw in re.split(r"[\s,]+", text or ""):
        origin = raw.strip().lower()
        if not origin:
            continue
        match = _ORIGIN.match(origin)
        if match is None or (match["port"] and not 0 < int(match["port"]) < 65536):
            raise forms.ValidationError(
                f"“{raw.strip()}” is not an origin: write scheme://host[:port], e.g. https://app.example.com "
                "(no path, no trailing slash)."
            )
        if origin not in seen:
            seen.append(origin)
    if len(seen) > MAX_ORIGINS:
        raise forms.ValidationError(f"At most {MAX_ORIGINS} origins.")
    return sorted(seen)


def _describe(form: forms.Form) -> None:
    """Tie each input to its help text for screen readers (console/_field.html renders ``<id>-help``)."""
    for name, field in form.fields.items():
        if field.help_text:
            field.widget.attrs.setdefault("aria-describedby", f"{form.auto_id % name}-help")


def _dollars(micros: int | None) -> str:
    if micros is None:
        return ""
    whole, frac = divmod(micros, 1_000_000)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


class ProjectSettingsForm(forms.Form):
    name = forms.CharField(max_length=200, label="Project name")
    allowed_origins = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), label="Allowed origins for publishable keys",
        help_text="One per line, scheme://host[:port]; a publishable key works only from these.",
    )
    idempotency_required = forms.BooleanField(required=False, label="Require an Idempotency-Key on every request")
    stream_resume_seconds = forms.IntegerField(
        min_value=0, max_value=600, label="Stream resume window (seconds)",
        help_text="How long a stream keeps generating after its client dropped, so it can resume (0–600).",
    )
    rpm_limit = forms.IntegerField(required=False, min_value=1, label="Requests per minute",
                                   help_text="Blank: the default, within your plan.")
    tpm_limit = forms.IntegerField(required=False, min_value=1, label="Tokens per minute",
                                   help_text="Blank: the default, within your plan.")
    monthly_spend_cap = forms.CharField(required=False, label="Monthly spend cap (USD)",
                                        help_text="Blank: no cap. Counted per calendar month (UTC).")

    def __init__(self, *args, project: Project, plan=None, **kwargs):
        self.project, self.plan = project, plan
        kwargs.setdefault("initial", {
            "name": project.name,
            "allowed_origins": "\n".join(project.allowed_origins or ()),
            "idempotency_required": project.idempotency_required,
            "stream_resume_seconds": project.stream_resume_seconds,
            "rpm_limit": project.rpm_limit,
            "tpm_limit": project.tpm_limit,
            "monthly_spend_cap": _dollars(project.monthly_spend_cap),
        })
        super().__init__(*args, **kwargs)
        if plan is not None:
            if plan.rpm_limit:
                self.fields["rpm_limit"].help_text = f"Blank: the default. Your plan ({plan.name}) allows up to {plan.rpm_limit}."
                self.fields["rpm_limit"].widget.attrs["max"] = plan.rpm_limit
            if plan.tpm_limit:
                self.fields["tpm_limit"].help_text = f"Blank: the default. Your plan ({plan.name}) allows up to {plan.tpm_limit}."
                self.fields["tpm_limit"].widget.attrs["max"] = plan.tpm_limit
        _describe(self)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("A project needs a name.")
        return name

    def clean_allowed_origins(self) -> list[str]:
        return parse_origins(self.cleaned_data.get("allowed_origins", ""))

    def _within_plan(self, field: str, what: str) -> int | None:
        value = self.cleaned_data.get(field)
        ceiling = getattr(self.plan, field, None) if self.plan is not None else None
        if value is not None and ceiling and value > ceiling:
            raise forms.ValidationError(
                f"Your plan ({self.plan.name}) allows at most {ceiling:,} {what}; "
                "choose a lower value or change plan on the billing page."
            )
        return value

    def clean_rpm_limit(self) -> int | None:
        return self._within_plan("rpm_limit", "requests per minute")

    def clean_tpm_limit(self) -> int | None:
        return self._within_plan("tpm_limit", "tokens per minute")

    def clean_monthly_spend_cap(self) -> int | None:
        text = (self.cleaned_data.get("monthly_spend_cap") or "").strip()
        if not text:
            return None
        try:
            return parse_amount(text)
        except TopupError:
            raise forms.ValidationError("Enter a cap in dollars, like 50 or 49.99 (at most two decimals).") from None


class BodyStorageForm(forms.Form):
    """Whether the gateway keeps API request/response bodies (encrypted), and how long."""

    store_bodies = forms.ChoiceField(
        choices=Project.StoreBodies.choices, widget=forms.RadioSelect, label="Keep request and response bodies",
    )
    body_retention_days = forms.IntegerField(
        min_value=1, max_value=3650, label="Days to keep them",
        help_text="Used with “For a number of days”; expired bodies are deleted within the hour.",
    )

    def __init__(self, *args, project: Project, **kwargs):
        kwargs.setdefault("initial", {"store_bodies": project.store_bodies, "body_retention_days": project.body_retention_days})
        super().__init__(*args, **kwargs)
        _describe(self)


class KeyCreateForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, label="Name")
    kind = forms.ChoiceField(
        choices=[(ApiKey.Kind.SECRET, "Secret (sk_…, server side)"),
                 (ApiKey.Kind.PUBLISHABLE, "Publishable (pk_…, browsers on allowed origins)")],
        initial=ApiKey.Kind.SECRET, label="Kind",
    )
    scopes = forms.MultipleChoiceField(
        choices=list(keys.SCOPES.items()), required=False, widget=forms.CheckboxSelectMultiple,
        label="Scopes", help_text="None ticked: the key may call everything.",
    )
    expires_on = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Expires on (UTC, optional)",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _describe(self)

    def clean_expires_on(self) -> dt.date | None:
        day = self.cleaned_data.get("expires_on")
        if day is not None and day <= timezone.now().astimezone(dt.UTC).date():
            raise forms.ValidationError("Pick a day after today.")
        return day

    @property
    def expires_at(self) -> dt.datetime | None:
        day = self.cleaned_data.get("expires_on")
        return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC) if day else None


class KeyRotateForm(forms.Form):
    grace_hours = forms.IntegerField(min_value=0, max_value=24 * 30, initial=24, label="Grace period (hours)")
