"""Who may call what: role (Django group) permissions for every API view.

Every API view needs a signed-in user whose session passed OTP and who holds
one of the view's roles. ``VerifiedRole`` is the project default
(``DEFAULT_PERMISSION_CLASSES``), so a view that declares nothing still needs
OTP and a role; views narrow it with ``roles_required(...)``. A refusal is
written to the audit log.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

VIEWER, TRADER, RISK_OFFICER, COMPLIANCE, ADMIN = "viewer", "trader", "risk_officer", "compliance", "admin"
ALL_ROLES = frozenset({VIEWER, TRADER, RISK_OFFICER, COMPLIANCE, ADMIN})


def user_roles(user: Any) -> set[str]:
    """The user's roles, read once per user object (one request): the permission check and the service share it."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    cached = getattr(user, "_fp_roles", None)
    if cached is not None:
        return set(cached)
    roles = set(user.groups.values_list("name", flat=True)) & ALL_ROLES
    if user.is_superuser:
        roles.add(ADMIN)
    user._fp_roles = frozenset(roles)
    return roles


def user_roles_forget(user: Any) -> None:
    """Drop the roles ``user_roles`` cached on this user object (its group membership changed)."""
    user.__dict__.pop("_fp_roles", None)


class VerifiedRole(BasePermission):
    """Signed in, OTP-verified, and holding one of ``roles`` (any role by default)."""

    roles: frozenset[str] = ALL_ROLES
    message = "permission denied"

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not getattr(user, "is_authenticated", False):
            return False
        verified = getattr(user, "is_verified", None)
        if not (callable(verified) and verified()):
            self.message = "this session has not passed OTP verification"
            self._record(request)
            return False
        if not user_roles(user) & self.roles:
            self.message = f"this needs one of the roles: {', '.join(sorted(self.roles))}"
            self._record(request)
            return False
        return True

    def _record(self, request: Request) -> None:
        from audit.security import permission_denied_record

        permission_denied_record(request=request._request, reason=f"{request.path}: {self.message}")


def roles_required(*roles: str) -> type[VerifiedRole]:
    """A permission class for exactly these roles (plus OTP)."""
    unknown = set(roles) - ALL_ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    return type(f"Requires_{'_'.join(sorted(roles))}", (VerifiedRole,), {"roles": frozenset(roles)})
