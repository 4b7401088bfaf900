"""Execution endpoints. The project includes them with ``path("api/", include("execution.urls"))``."""

from __future__ import annotations

from django.urls import path

from execution import api

app_name = "execution"

urlpatterns = [
    path("signals/<int:signal_id>/approve", api.SignalApproveView.as_view(), name="signal-approve"),
    path("signals/<int:signal_id>/reject", api.SignalRejectView.as_view(), name="signal-reject"),
    path("automations/<int:automation_id>/mode", api.AutomationModeView.as_view(), name="automation-mode"),
    path("orders/", api.OrderListView.as_view(), name="order-list"),
    path("orders/<int:order_id>/", api.OrderDetailView.as_view(), name="order-detail"),
]
