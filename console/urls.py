from django.urls import path

from . import views

app_name = "console"
urlpatterns = [
    path("", views.home, name="home"),
    path("console/", views.dashboard, name="dashboard"),
    path("console/projects/<str:project_id>/", views.project_detail, name="project"),
    path("console/projects/<str:project_id>/keys/new", views.key_create, name="key_create"),
    path("console/projects/<str:project_id>/keys/<str:key_id>/rotate", views.key_rotate, name="key_rotate"),
    path("console/projects/<str:project_id>/keys/<str:key_id>/revoke", views.key_revoke, name="key_revoke"),
    path("console/projects/<str:project_id>/routing", views.project_routing, name="project_routing"),
    path("healthz", views.healthz, name="healthz"),
]
