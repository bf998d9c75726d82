"""Web Chat pages (server-rendered; static/js/chat.js streams answers on top).

Every view: session auth, CSRF on POST, ``chat.use`` in the caller's organization,
and a conversation must be the caller's own (404 otherwise, also for another
member of the same organization). Without JavaScript the forms still work: a
posted message starts the turn in the server (console.relay.start_detached) and
the conversation page refreshes until the answer is stored.
"""
from __future__ import annotations

import datetime as dt

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib import messages as flash
from django.db.models import Q
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from . import access, chat_store, webchat
from .models import Conversation, RelayCredential


def _wants_json(request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _conversation(request, conversation_id: str) -> Conversation:
    try:
        conversation = webchat.conversation_for(request.user, conversation_id)
    except Conversation.DoesNotExist:
        raise Http404("No such conversation") from None
    access.for_organization(request.user, conversation.project.organization, "chat.use")
    return conversation


def _page(request, conversation: Conversation | None, *, status: int = 200):
    organization = conversation.project.organization if conversation else request.access.organization
    listed = []
    for item in webchat.conversations_for(request.user, organization)[:100]:
        listed.append({"id": item.public_id, "title": chat_store.title_text(item) or "New chat", "model": item.model,
                       "current": conversation is not None and item.id == conversation.id})
    shown, pending = [], None
    if conversation is not None:
        for message in webchat.visible_messages(conversation):
            shown.append({**webchat.message_json(message), "created_at": message.created_at})
        now = timezone.now()
        running_since = now - dt.timedelta(seconds=settings.GATEWAY_MAX_REQUEST_SECONDS)
        pending = (  # a turn still running (or about to), its answer not stored yet; not one whose process died
            RelayCredential.objects.filter(conversation=conversation)
            .filter(Q(state=RelayCredential.State.STREAMING, used_at__gt=running_since)
                    | Q(state=RelayCredential.State.MINTED, expires_at__gt=now))
            .order_by("-created_at")
            .values_list("turn_id", flat=True)
            .first()
        )
    project = conversation.project if conversation else webchat.chat_project(organization)
    return render(
        request,
        "console/chat.html",
        {
            "conversation": conversation,
            "title": chat_store.title_text(conversation) if conversation else "",
            "conversations": listed,
            "chat_messages": shown,
            "models": webchat.chat_models(organization),
            "project": project,
            "pending_turn": pending,
            "organization": organization,
        },
        status=status,
    )


@access.requires("chat.use")
@require_GET
def chat_home(request):
    return _page(request, None)


@access.requires("chat.use")
@require_GET
def chat_conversation(request, conversation_id: str):
    return _page(request, _conversation(request, conversation_id))


def _turn_payload(conversation: Conversation, turn: webchat.Turn) -> dict:
    return {
        "conversation_id": conversation.public_id,
        "conversation_url": reverse("console:chat_conversation", args=[conversation.public_id]),
        "title": chat_store.title_text(conversation),
        "turn_id": turn.turn_id,
        "stream_url": f"/chat/relay/{conversation.public_id}/",
        "credential": turn.credential,
        "expires_at": turn.expires_at.isoformat(),
        "status_url": reverse("console:chat_turn_status", args=[conversation.public_id, turn.turn_id]),
        "stop_url": reverse("console:chat_turn_stop", args=[conversation.public_id, turn.turn_id]),
        "user_message": webchat.message_json(turn.user_message) if turn.user_message else None,
    }


def _refused(request, message: str, *, back: str):
    if _wants_json(request):
        return JsonResponse({"error": {"code": "chat_refused", "message": message}}, status=400)
    flash.error(request, message)
    return redirect(back)


def _started(request, conversation: Conversation, turn: webchat.Turn):
    if _wants_json(request):
        return JsonResponse(_turn_payload(conversation, turn), status=201)
    # No JavaScript: run the turn in the server; the page refreshes until the answer is stored.
    from .relay import start_detached

    async_to_sync(start_detached)(turn.credential, request.user.id, conversation.public_id)
    return redirect("console:chat_conversation", conversation_id=conversation.public_id)


@access.requires("chat.use")
@require_POST
def chat_new(request):
    """A new conversation with the chosen model, and (if given) its first turn."""
    organization = request.access.organization
    project = webchat.chat_project(organization)
    back = reverse("console:chat")
    if project is None:
        return _refused(request, "This organization has no project to bill the chat to.", back=back)
    try:
        conversation = webchat.conversation_create(user=request.user, project=project, model=request.POST.get("model", ""))
    except webchat.ChatError as exc:
        return _refused(request, str(exc), back=back)
    text = request.POST.get("message", "")
    if not text.strip():
        if _wants_json(request):
            return JsonResponse({"conversation_id": conversation.public_id,
                                 "conversation_url": reverse("console:chat_conversation", args=[conversation.public_id])},
                                status=201)
        return redirect("console:chat_conversation", conversation_id=conversation.public_id)
    try:
        turn = webchat.turn_start(conversation=conversation, user=request.user, text=text)
    except webchat.ChatError as exc:
        return _refused(request, str(exc), back=reverse("console:chat_conversation", args=[conversation.public_id]))
    return _started(request, conversation, turn)


@access.requires("chat.use")
@require_POST
def chat_turn(request, conversation_id: str):
    """Store the user's message (or regenerate the last answer) and mint the turn's relay credential."""
    conversation = _conversation(request, conversation_id)
    back = reverse("console:chat_conversation", args=[conversation.public_id])
    try:
        turn = webchat.turn_start(
            conversation=conversation, user=request.user, text=request.POST.get("message", ""),
            regenerate=request.POST.get("regenerate") == "1",
        )
    except webchat.ChatError as exc:
        return _refused(request, str(exc), back=back)
    return _started(request, conversation, turn)


@access.requires("chat.use")
@require_GET
def chat_turn_status(request, conversation_id: str, turn_id: str):
    state = webchat.turn_state(conversation=_conversation(request, conversation_id), turn_id=turn_id)
    if state is None:
        raise Http404("No such turn")
    return JsonResponse(state)


@access.requires("chat.use")
@require_POST
def chat_turn_stop(request, conversation_id: str, turn_id: str):
    """Stop the turn's generation; answers with the stored (partial) reply once it is there."""
    conversation = _conversation(request, conversation_id)
    webchat.turn_stop(conversation=conversation, turn_id=turn_id)
    # Not waited for here (the run stores the reply from the event loop): the page polls the turn.
    state = webchat.turn_state(conversation=conversation, turn_id=turn_id)
    if state is None:
        raise Http404("No such turn")
    if _wants_json(request):
        return JsonResponse(state)
    return redirect("console:chat_conversation", conversation_id=conversation.public_id)


@access.requires("chat.use")
@require_POST
def chat_rename(request, conversation_id: str):
    conversation = _conversation(request, conversation_id)
    title = request.POST.get("title", "").strip()
    if title:
        webchat.conversation_rename(conversation=conversation, title=title)
    if _wants_json(request):
        return JsonResponse({"title": chat_store.title_text(conversation)})
    return redirect("console:chat_conversation", conversation_id=conversation.public_id)


@access.requires("chat.use")
@require_POST
def chat_delete(request, conversation_id: str):
    webchat.conversation_delete(conversation=_conversation(request, conversation_id))
    flash.success(request, "Conversation deleted.")
    return redirect("console:chat")

