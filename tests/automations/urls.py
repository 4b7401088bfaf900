"""The project's URLs plus the automations app's, for tests that run before the project includes them."""

from __future__ import annotations

from django.urls import include, path

from trading.urls import urlpatterns as project_urls

urlpatterns = [*project_urls, path("", include("automations.urls"))]
