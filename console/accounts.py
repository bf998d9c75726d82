"""Accounts (django-allauth): what happens around sign-up and sign-in.

* A new user gets an organization named after their email and a default project
  (``services.organization_create``) — here and nowhere else.
* A visitor who opened an invitation link and then signed up or in is brought back to it:
  the link's token waits in the session (``console.invitations.SESSION_KEY``).
"""
from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.db import transaction

from . import services
from .invitations import SESSION_KEY


def organization_name(email: str) -> str:
    local = (email or "").split("@", 1)[0].strip() or "My"
    return f"{local[:150]}'s organization"


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        user = super().save_user(request, user, form, commit=commit)
        if commit:
            with transaction.atomic():
                services.organization_create(name=organization_name(user.email), owner=user)
        return user

    def get_login_redirect_url(self, request):
        token = request.session.get(SESSION_KEY)
        if token:
            from django.urls import reverse

            return reverse("console:invite", kwargs={"token": token})
        return super().get_login_redirect_url(request)
