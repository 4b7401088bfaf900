"""The compliance admin site: Django admin behind a one-time password."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django_otp.admin import OTPAdminSite


class ComplianceAdminSite(OTPAdminSite):
    """OTP-protected admin: only staff who signed in with a verified device get in.

    Every permission denial inside the admin is recorded as an audit event.
    """

    site_header = "First Principle - operations and compliance"
    site_title = "First Principle admin"
    index_title = "Configuration, history and audit"

    def admin_view(self, view: Callable[..., HttpResponse], cacheable: bool = False) -> Callable[..., HttpResponse]:
        inner = super().admin_view(view, cacheable)

        def audited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return inner(request, *args, **kwargs)
            except PermissionDenied as exc:
                from audit.security import permission_denied_record

                permission_denied_record(request=request, reason=str(exc) or f"admin: {request.path}")
                raise

        audited.__wrapped__ = inner  # type: ignore[attr-defined]
        audited.csrf_exempt = getattr(inner, "csrf_exempt", False)  # type: ignore[attr-defined]
        return audited


def install_compliance_site() -> None:
    """Make ``django.contrib.admin.site`` the compliance site.

    django-otp's documented way (``admin.site.__class__ = OTPAdminSite``):
    every app's ``admin.py`` keeps registering on ``admin.site`` and
    ``trading/urls.py`` keeps ``admin.site.urls``.
    """
    if not isinstance(admin.site, ComplianceAdminSite):
        admin.site.__class__ = ComplianceAdminSite
