from django.urls import path

from . import recharge_views, webhooks

app_name = "billing"

urlpatterns = [
    path("stripe/webhook", webhooks.stripe_webhook, name="stripe-webhook"),
    path("auto-recharge", recharge_views.auto_recharge, name="auto-recharge"),
]
