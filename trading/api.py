"""Shared API plumbing: every error answers JSON with a message, never a 5xx page."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import status
from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class DomainError(Exception):
    """A refusal by a service that the caller should see as a 4xx with a message."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, message: str, *, code: str = "refused", status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        if status_code is not None:
            self.status_code = status_code


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, PermissionDenied | NotAuthenticated):
        # Every refusal is a security event compliance can see.
        from audit.views import drf_permission_denied

        drf_permission_denied(exc, context)
    if isinstance(exc, DomainError):
        return Response({"detail": exc.message, "code": exc.code}, status=exc.status_code)
    from audit.history import MissingReason, UnauthorizedChange

    if isinstance(exc, UnauthorizedChange):
        # Already refused, audited and alerted by the history guard.
        return Response({"detail": str(exc), "code": "forbidden"}, status=status.HTTP_403_FORBIDDEN)
    if isinstance(exc, MissingReason):
        return Response({"detail": str(exc), "code": "reason_required"}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        return Response({"detail": exc.messages, "code": "invalid"}, status=status.HTTP_400_BAD_REQUEST)
    return drf_exception_handler(exc, context)


class AutoSchema(SpectacularAutoSchema):
    """Names nested ``InputSerializer``/``OutputSerializer`` components after their view.

    Views declare their serializers inside the view class (one view per
    operation), so many are called ``InputSerializer``; without this their
    schema components would collide.
    """

    def _get_serializer_name(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> str:
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        cls = serializer if isinstance(serializer, type) else type(serializer)
        outer = cls.__qualname__.rsplit(".", 1)[0] if "." in cls.__qualname__ else ""
        if outer and not name.startswith(outer):
            return f"{outer}{name}"
        return name
