"""The URLs the lead includes in trading/urls.py, for the API tests until that include lands."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("api/", include("execution.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
]
