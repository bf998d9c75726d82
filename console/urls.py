from django.urls import path

from . import billing_views, node_views, views

app_name = "console"
urlpatterns = [
    path("", views.home, name="home"),
    path("console/", views.dashboard, name="dashboard"),
    path("console/projects/<str:project_id>/", views.project_detail, name="project"),
    path("console/projects/<str:project_id>/keys/new", views.key_create, name="key_create"),
    path("console/projects/<str:project_id>/keys/<str:key_id>/rotate", views.key_rotate, name="key_rotate"),
    path("console/projects/<str:project_id>/keys/<str:key_id>/revoke", views.key_revoke, name="key_revoke"),
    path("console/projects/<str:project_id>/routing", views.project_routing, name="project_routing"),
    path("console/orgs/<str:org_id>/nodes/", node_views.organization_nodes, name="org_nodes"),
    path("console/orgs/<str:org_id>/nodes/jobs", node_views.organization_jobs, name="org_node_jobs"),
    path("billing/", billing_views.billing_page, name="billing"),
    path("billing/topup", billing_views.topup_start, name="billing_topup"),
    path("billing/topup/success", billing_views.topup_success, name="billing_topup_success"),
    path("billing/topup/cancel", billing_views.topup_cancel, name="billing_topup_cancel"),
    path("billing/topups/<int:transfer_id>/refund", billing_views.topup_refund, name="billing_topup_refund"),
    path("billing/reactivate", billing_views.wallet_reactivate, name="billing_reactivate"),
    path("healthz", views.healthz, name="healthz"),
]
