from django.urls import path, re_path

from . import management_api as api
from .drf import not_found

urlpatterns = [
    path("keys", api.KeyList.as_view()),
    path("keys/<str:key_id>", api.KeyDetail.as_view()),
    path("keys/<str:key_id>/rotate", api.KeyRotateView.as_view()),
    path("balance", api.BalanceView.as_view()),
    re_path(r"^.*$", not_found),
]
