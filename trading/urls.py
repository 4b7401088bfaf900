from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from trading.health import health_view
from trading.metrics import metrics_view

urlpatterns = [
    path("health", health_view, name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/risk/", include("risk.urls")),
    path("api/", include("execution.urls")),
    path("", include("automations.urls")),
]

# Denials outside the admin and the API are audited too.
handler403 = "audit.views.permission_denied_view"
