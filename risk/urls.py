"""Risk endpoints; included by the project at ``api/risk/``."""

from __future__ import annotations

from django.urls import path

from risk import api

app_name = "risk"

urlpatterns = [
    path("kill-switch/", api.KillSwitchView.as_view(), name="kill-switch"),
    path("kill-switch/engage/", api.KillSwitchEngageView.as_view(), name="kill-switch-engage"),
    path("kill-switch/release/", api.KillSwitchReleaseView.as_view(), name="kill-switch-release"),
    path("breakers/", api.BreakerTripListView.as_view(), name="breakers"),
    path("breakers/<int:trip_id>/reset/", api.BreakerResetView.as_view(), name="breaker-reset"),
    path("alerts/", api.AlertListView.as_view(), name="alerts"),
    path("limits/", api.RiskLimitSetView.as_view(), name="limits"),
]
