from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("v1/", include("gateway.management_urls")),
    path("billing/", include("billing.urls")),
    path("", include("console.urls")),
]
