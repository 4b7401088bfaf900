from __future__ import annotations

import pgtrigger
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from simple_history.models import HistoricalRecords

# The guard every append-only table carries. Row triggers refuse UPDATE and
# DELETE; a statement trigger refuses TRUNCATE. The TRUNCATE guard yields only
# when the session sets fp.audit_allow_truncate = 'on', which the test
# database sets for itself (Django flushes test tables with TRUNCATE); the
# application role has no TRUNCATE privilege in any case (setup_db_roles).
TRUNCATE_GUARD_SQL = (
    "IF current_setting('fp.audit_allow_truncate', true) = 'on' THEN RETURN NULL; END IF; "
    "RAISE EXCEPTION 'append-only: cannot truncate table %', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';"
)


def append_only_triggers(prefix: str) -> list[pgtrigger.Trigger]:
    return [
        pgtrigger.Protect(name=f"{prefix}_no_update", operation=pgtrigger.Update),
        pgtrigger.Protect(name=f"{prefix}_no_delete", operation=pgtrigger.Delete),
        pgtrigger.Trigger(name=f"{prefix}_no_truncate", operation=pgtrigger.Truncate, level=pgtrigger.Statement,
                          when=pgtrigger.Before, func=TRUNCATE_GUARD_SQL),
    ]


class AuditEvent(models.Model):
    """An append-only record of a decision or a security event.

    Each event carries the SHA-256 of its canonical content chained to the
    previous event's hash, so an edit, deletion or out-of-order insertion
    anywhere breaks the chain at a nameable place (``verify_audit``).
    """

    class Kind(models.TextChoices):
        SIGN_IN = "sign_in", "Sign-in"
        SIGN_IN_FAILED = "sign_in_failed", "Sign-in failed"
        OTP_FAILED = "otp_failed", "OTP failed"
        LOCKOUT = "lockout", "Lockout"
        PERMISSION_DENIED = "permission_denied", "Permission denied"
        CONFIG_CHANGE = "config_change", "Configuration change"
        CONFIG_REFUSED = "config_refused", "Configuration change refused"
        SIGNAL_STATE = "signal_state", "Signal state change"
        APPROVAL = "approval", "Approval"
        REJECTION = "rejection", "Rejection"
        ORDER = "order", "Order"
        KILL_SWITCH = "kill_switch", "Kill switch"
        BREAKER_TRIP = "breaker_trip", "Breaker trip"
        BREAKER_RESET = "breaker_reset", "Breaker reset"
        AUTOMATION_STATE = "automation_state", "Automation state"
        MODE_CHANGE = "mode_change", "Mode change"
        LIMIT_CHANGE = "limit_change", "Limit change"
        EXPORT = "export", "Export"
        ALERT = "alert", "Alert"
        ROLE_CHANGE = "role_change", "Role change"
        HISTORY = "history", "Versioned change"
        SYSTEM = "system", "System"

    at = models.DateTimeField(db_index=True)
    # No single-column indexes on actor or kind: audit_actor_idx and audit_kind_idx lead with them and serve
    # every filter on them (and the PROTECT check of a user's deletion); each index is a write per event.
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                              db_index=False)
    actor_label = models.CharField(max_length=150, blank=True, help_text="Who acted: a username, or a process such as 'worker-execute'.")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    subject_type = models.CharField(max_length=64, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    # Its unique index stays; the varchar_pattern_ops twin Django adds for LIKE is dropped (audit 0007).
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id", "id"], name="audit_subject_idx"),
            models.Index(fields=["actor", "id"], name="audit_actor_idx"),
            models.Index(fields=["kind", "id"], name="audit_kind_idx"),
        ]
        permissions = [
            ("export_records", "Can export audit events and history"),
            ("verify_records", "Can run the audit chain verification"),
        ]
        triggers = append_only_triggers("audit_event")
        # Reason-text search on millions of rows: the admin's "contains" search
        # is UPPER(reason) LIKE '%...%', so a trigram index on UPPER(reason)
        # serves it. It is created by migration 0004 in SQL (Django renders an
        # OpClass over an expression in a GinIndex with invalid parentheses).

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.subject_type}:{self.subject_id}"


class RoleAssignment(models.Model):
    """A user's membership of a role (a ``Group``), versioned with who granted it and why.

    ``auth.User.groups`` is the membership Django checks; this row mirrors it
    so that grants and revocations have a history row with a reason and an
    actor, which the bare many-to-many table cannot carry. Change roles only
    through ``audit.services.role_assign`` / ``role_revoke``.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="role_assignments")
    role = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="assignments")
    active = models.BooleanField(default=True)
    changed_at = models.DateTimeField()

    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "role"], name="role_assignment_once")]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} ({'active' if self.active else 'revoked'})"
