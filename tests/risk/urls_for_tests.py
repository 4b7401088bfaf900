from __future__ import annotations

from django.urls import include, path

urlpatterns = [path("api/risk/", include("risk.urls"))]
