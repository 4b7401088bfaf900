"""Views: the 403 handler that puts every permission denial on record."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.defaults import permission_denied

from audit.security import permission_denied_record


def permission_denied_view(request: HttpRequest, exception: Exception | None = None, **kwargs: Any) -> HttpResponse:
    """``handler403``: record the denial, then render Django's default 403 page."""
    try:
        permission_denied_record(request=request, reason=str(exception or ""))
    except Exception:
        import logging

        logging.getLogger(__name__).exception("audit: could not record a permission denial")
    return permission_denied(request, exception or Exception(""))


def drf_permission_denied(exc: Exception, context: dict[str, Any]) -> None:
    """Call from the DRF exception handler for ``PermissionDenied`` / ``NotAuthenticated``."""
    request = context.get("request")
    permission_denied_record(request=getattr(request, "_request", request), reason=str(exc))
