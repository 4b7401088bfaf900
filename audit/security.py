"""Security events: sign-ins, OTP failures, lockouts, permission denials."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model

from audit.models import AuditEvent
from audit.services import alert_raise_on_commit, audit_event_record

logger = logging.getLogger(__name__)


def _client(request: Any) -> dict[str, str]:
    if request is None:
        return {}
    meta = getattr(request, "META", {})
    return {"ip": meta.get("REMOTE_ADDR", ""), "user_agent": meta.get("HTTP_USER_AGENT", "")[:200],
            "path": getattr(request, "path", "")}


def on_user_logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit_event_record(kind=AuditEvent.Kind.SIGN_IN, actor=user, subject=user, data=_client(request))


def on_user_login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
    # Never record the password: only the username that was tried.
    username = str(credentials.get("username", ""))[:150]
    audit_event_record(kind=AuditEvent.Kind.SIGN_IN_FAILED, actor_label=username or "anonymous",
                       subject_type="auth.user", subject_id=username, data=_client(request))


def on_otp_verification_failed(sender: Any, user: Any = None, **kwargs: Any) -> None:
    otp_failure_record(user=user, context=getattr(sender, "__name__", str(sender)))


def otp_failure_record(*, user: Any, context: str, request: Any = None) -> AuditEvent:
    """Record a failed one-time password (sign-in, approval or admin)."""
    label = user.get_username() if user is not None else "anonymous"
    return audit_event_record(kind=AuditEvent.Kind.OTP_FAILED, actor=user, actor_label=label,
                              subject_type="auth.user", subject_id=getattr(user, "pk", "") or "",
                              data={"context": context, **_client(request)})


def on_user_locked_out(sender: Any, request: Any = None, username: str = "", ip_address: str = "", **kwargs: Any) -> None:
    user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first() if username else None
    audit_event_record(kind=AuditEvent.Kind.LOCKOUT, actor=user, actor_label=username or "anonymous",
                       subject_type="auth.user", subject_id=getattr(user, "pk", "") or username,
                       data={"ip": ip_address, **_client(request)})
    alert_raise_on_commit(kind="lockout", severity="warning", subject=f"Sign-in lockout for {username or ip_address}",
                          message=f"django-axes locked out {username!r} from {ip_address}.",
                          dedup_key=f"lockout:{username}:{ip_address}")


def permission_denied_record(*, request: Any, reason: str = "") -> AuditEvent | None:
    """Record a 403 once per request (the admin site and the 403 handler may both see it)."""
    if request is None or getattr(request, "_fp_denial_recorded", False):
        return None
    request._fp_denial_recorded = True
    user = getattr(request, "user", None)
    user = user if getattr(user, "is_authenticated", False) else None
    return audit_event_record(kind=AuditEvent.Kind.PERMISSION_DENIED, actor=user,
                              actor_label=user.get_username() if user else "anonymous",
                              reason=str(reason)[:500], data={"method": request.method, **_client(request)})
