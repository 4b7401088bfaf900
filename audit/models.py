from __future__ import annotations

from django.conf import settings
from django.db import models


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
        SYSTEM = "system", "System"

    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    actor_label = models.CharField(max_length=150, blank=True, help_text="Who acted: a username, or a process such as 'worker-execute'.")
    kind = models.CharField(max_length=32, choices=Kind.choices, db_index=True)
    subject_type = models.CharField(max_length=64, blank=True)
    subject_id = models.CharField(max_length=64, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["subject_type", "subject_id", "id"], name="audit_subject_idx"),
            models.Index(fields=["actor", "id"], name="audit_actor_idx"),
            models.Index(fields=["kind", "id"], name="audit_kind_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.subject_type}:{self.subject_id}"
