from django.urls import path

from . import billing_views, finance_views, network_views, node_views, status_views, views

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
    path("finance/", finance_views.finance_home, name="finance"),
    path("finance/report", finance_views.platform_report, name="finance_report"),
    path("finance/orgs/<str:org_id>/", finance_views.organization_report, name="finance_org"),
    path("finance/runs/", finance_views.runs, name="finance_runs"),
    path("finance/runs/<int:run_id>/", finance_views.run_detail, name="finance_run"),
    path("finance/runs/<int:run_id>/discrepancies.csv", finance_views.run_csv, name="finance_run_csv"),
    path("finance/runs/<int:run_id>/rerun", finance_views.run_rerun, name="finance_run_rerun"),
    path("finance/runs/<int:run_id>/heal", finance_views.run_heal_view, name="finance_run_heal"),
    path("finance/discrepancies/<int:discrepancy_id>/close", finance_views.discrepancy_close_view,
         name="finance_discrepancy_close"),
    path("healthz", views.healthz, name="healthz"),
    path("status/", status_views.status_page, name="status"),
    path("status.json", status_views.status_json, name="status_json"),
    path("console/nodes/", network_views.nodes_page, name="nodes"),
    path("console/quickstart/", network_views.quickstart_page, name="quickstart"),
]
