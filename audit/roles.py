"""The five roles and what each may do (``manage.py setup_roles``)."""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import Q

PROJECT_APPS = ("automations", "risk", "execution", "ingestion", "audit")

VIEWER = [
    "automations.view_automation", "automations.view_signal", "automations.view_signaltransition",
    "automations.view_l2snapshot", "risk.view_risklimit", "risk.view_killswitch", "risk.view_breakertrip",
    "risk.view_alert", "execution.view_order", "execution.view_fill", "ingestion.view_instrument",
]
# A trader may stop trading (engage the kill switch); releasing it is the risk officer's.
TRADER = [*VIEWER, "automations.change_automation", "execution.add_approval", "execution.view_approval", "risk.change_killswitch"]
RISK_OFFICER = [
    *VIEWER, "automations.add_automation", "automations.change_automation", "risk.add_risklimit", "risk.change_risklimit", "risk.change_killswitch",
    "risk.change_breakertrip", "risk.view_riskstate", "risk.view_historicalrisklimit", "risk.view_historicalkillswitch",
    "execution.view_approval",
]
COMPLIANCE_EXTRA = ["auth.view_user", "auth.view_group", "audit.export_records", "audit.verify_records"]

ROLE_NAMES = ("viewer", "trader", "risk_officer", "compliance", "admin")


def _permissions(codes: list[str]) -> list[Permission]:
    query = Q(pk__in=[])
    for code in codes:
        app_label, codename = code.split(".", 1)
        query |= Q(content_type__app_label=app_label, codename=codename)
    found = list(Permission.objects.filter(query))
    missing = set(codes) - {f"{p.content_type.app_label}.{p.codename}" for p in found}
    if missing:
        raise LookupError(f"permissions not found (migrate first?): {sorted(missing)}")
    return found


@transaction.atomic
def roles_setup() -> dict[str, int]:
    """Create (or bring back in line) the role groups; returns role -> permission count. Idempotent."""
    compliance = list(Permission.objects.filter(content_type__app_label__in=PROJECT_APPS, codename__startswith="view_"))
    compliance += _permissions(COMPLIANCE_EXTRA)
    wanted = {
        "viewer": _permissions(VIEWER),
        "trader": _permissions(TRADER),
        "risk_officer": _permissions(RISK_OFFICER),
        "compliance": compliance,
        "admin": list(Permission.objects.all()),
    }
    counts = {}
    for name, permissions in wanted.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)
        counts[name] = len(set(permissions))
    return counts
