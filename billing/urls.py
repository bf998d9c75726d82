from django.urls import path

from . import plan_views, recharge_views, webhooks

app_name = "billing"

urlpatterns = [
    path("stripe/webhook", webhooks.stripe_webhook, name="stripe-webhook"),
    path("auto-recharge", recharge_views.auto_recharge, name="auto-recharge"),
    path("plan", plan_views.plan_page, name="plan"),
    path("plan/subscribe", plan_views.plan_subscribe, name="plan_subscribe"),
    path("plan/change", plan_views.plan_change, name="plan_change"),
    path("plan/cancel", plan_views.plan_cancel, name="plan_cancel"),
    path("plan/portal", plan_views.plan_portal, name="plan_portal"),
]
