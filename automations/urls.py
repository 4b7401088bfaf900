"""Trader page, login and the automations/signals API.

The project includes these at the root: ``path("", include("automations.urls"))``.
"""

from __future__ import annotations

from django.contrib.auth.views import LogoutView
from django.urls import path

from automations import api, views

urlpatterns = [
    path("", views.trader_page, name="trader"),
    path("accounts/login/", views.OTPLoginView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(next_page="/accounts/login/"), name="logout"),
    path("vendor/plotly.min.js", views.plotly_js, name="plotly-js"),
    path("api/automations/", api.AutomationListApi.as_view(), name="automation-list"),
    path("api/automations/create", api.AutomationCreateApi.as_view(), name="automation-create"),
    path("api/automations/<int:automation_id>/", api.AutomationDetailApi.as_view(), name="automation-detail"),
    path("api/automations/<int:automation_id>/update", api.AutomationUpdateApi.as_view(), name="automation-update"),
    path("api/automations/<int:automation_id>/pause", api.AutomationPauseApi.as_view(), name="automation-pause"),
    path("api/automations/<int:automation_id>/resume", api.AutomationResumeApi.as_view(), name="automation-resume"),
    path("api/signals/", api.SignalListApi.as_view(), name="signal-list"),
    path("api/signals/<int:signal_id>/", api.SignalDetailApi.as_view(), name="signal-detail"),
]
