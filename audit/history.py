"""Who, when and why for every versioned change.

Versioned models (simple-history) may only change with a reason, made by
someone allowed to make the change. The acting user comes, in this order, from
``acting_as(...)`` (services, tasks, management commands' ``--user``), or from
the request simple-history's ``HistoryRequestMiddleware`` saw. A save without a
reason raises ``MissingReason``; a save by a user without the model permission
raises ``UnauthorizedChange``. Both refusals are recorded as audit events in
their own committed transaction (the refused transaction rolls back) and raise
an alert.

Every historical row simple-history writes is sealed into the audit hash
chain: a ``history`` audit event carries the SHA-256 of the row as stored, the
field-by-field changes, the actor and the reason. ``verify_audit`` recomputes
these, so a history row edited, deleted or inserted behind the application's
back is found and named.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import models
from simple_history.models import HistoricalRecords

logger = logging.getLogger(__name__)

# The models whose changes alter behaviour. Labels, not classes: audit is a
# base layer and must not import the apps that own them.
VERSIONED_MODELS: tuple[str, ...] = (
    "automations.automation",
    "risk.risklimit",
    "risk.killswitch",
    "execution.brokeraccount",
    "audit.roleassignment",
)

# Fields that are counters, not configuration: saves limited to these need no
# reason and write no history row (simple-history excludes them anyway).
UNTRACKED_FIELDS: dict[str, frozenset[str]] = {
    "automations.automation": frozenset({"approved_trade_count", "automatic_trade_count", "updated_at"}),
    "risk.risklimit": frozenset({"updated_at"}),
}


class ChangeRefused(Exception):
    """A change to a versioned model was refused; the refusal is in the audit log."""


class MissingReason(ChangeRefused, ValueError):
    """A versioned model was saved without a change reason."""


class UnauthorizedChange(ChangeRefused, PermissionError):
    """A versioned model was changed by a user who lacks the permission."""


@dataclass(frozen=True)
class Acting:
    user: Any
    reason: str
    label: str


_acting: contextvars.ContextVar[Acting | None] = contextvars.ContextVar("fp_audit_acting", default=None)


class _ActorRequest:
    """Stands in for a request so simple-history attributes rows to the actor."""

    def __init__(self, user: Any) -> None:
        self.user = user


@contextmanager
def acting_as(user: Any, reason: str, *, label: str = "") -> Iterator[Acting]:
    """Attribute every versioned change (and audit event) in the block to ``user`` with ``reason``.

    ``user`` may be None for a process acting on its own authority; then
    ``label`` names it (e.g. ``"worker-detect"``). Nested blocks override the
    outer one and restore it on exit.
    """
    reason = (reason or "").strip()
    if not reason:
        raise MissingReason("acting_as() needs a non-empty reason: every change must say why")
    user = user if getattr(user, "is_authenticated", False) else None
    acting = Acting(user=user, reason=reason, label=label or (user.get_username() if user else "system"))
    token = _acting.set(acting)
    context = HistoricalRecords.context
    missing = object()
    previous_request = getattr(context, "request", missing)
    if user is not None:
        context.request = _ActorRequest(user)
    try:
        yield acting
    finally:
        if user is not None:
            if previous_request is missing:
                with suppress(AttributeError):
                    del context.request
            else:
                context.request = previous_request
        _acting.reset(token)


def current_acting() -> Acting | None:
    return _acting.get()


def current_user() -> Any:
    """The user on whose behalf code runs: ``acting_as`` first, then the request's user."""
    acting = _acting.get()
    if acting is not None and acting.user is not None:
        return acting.user
    request = getattr(HistoricalRecords.context, "request", None)
    user = getattr(request, "user", None)
    return user if getattr(user, "is_authenticated", False) else None


def current_label() -> str:
    acting = _acting.get()
    if acting is not None:
        return acting.label
    user = current_user()
    return user.get_username() if user is not None else ""


def change_reason(instance: models.Model) -> str:
    """The reason for the pending change of ``instance``: its own ``_change_reason``, else the ambient one."""
    own = (getattr(instance, "_change_reason", None) or "").strip()
    if own:
        return own
    acting = _acting.get()
    return acting.reason if acting is not None else ""


def require_reason(instance: models.Model, *, action: str = "change") -> str:
    """Return the change reason for ``instance`` and check the actor's permission, or refuse.

    Raises ``MissingReason`` or ``UnauthorizedChange`` after recording the
    refusal (audit event in its own transaction, alert).
    """
    label = instance._meta.label_lower
    reason = change_reason(instance)
    # A service may name the user on the instance (simple-history's _history_user).
    explicit = getattr(instance, "_history_user", None)
    user = explicit if getattr(explicit, "is_authenticated", False) else current_user()
    if not reason:
        _refuse(instance, action=action, user=user, why="missing_reason", reason="")
        raise MissingReason(
            f"{label} pk={instance.pk}: a {action} of a versioned model needs a reason. Set "
            f"instance._change_reason or wrap the change in audit.history.acting_as(user, reason)."
        )
    perm = f"{instance._meta.app_label}.{action}_{instance._meta.model_name}"
    if user is not None and not user.has_perm(perm):
        _refuse(instance, action=action, user=user, why="permission", reason=reason)
        raise UnauthorizedChange(f"{user.get_username()} lacks {perm}: the {action} of {label} pk={instance.pk} is refused")
    return reason


def _refuse(instance: models.Model, *, action: str, user: Any, why: str, reason: str) -> None:
    from audit.models import AuditEvent
    from audit.services import alert_raise_on_commit, audit_event_record_autonomous

    label = instance._meta.label_lower
    data = {"model": label, "object_id": str(instance.pk or ""), "action": action, "why": why}
    audit_event_record_autonomous(
        kind=AuditEvent.Kind.CONFIG_REFUSED, actor=user, actor_label=current_label(),
        subject_type=label, subject_id=str(instance.pk or ""), reason=reason, data=data,
    )
    who = user.get_username() if user is not None else (current_label() or "unknown")
    alert_raise_on_commit(
        kind="unauthorized_config_change", severity="critical",
        subject=f"Refused {action} of {label} by {who}",
        message=f"A {action} of {label} pk={instance.pk} by {who} was refused ({why}).",
        dedup_key=f"config_refused:{label}:{instance.pk}:{why}",
        # Now, not on commit: the refused transaction is about to roll back,
        # and the refusal is a fact whether or not anything commits.
        immediate=True,
    )


# Receivers, connected for VERSIONED_MODELS in AuditConfig.ready().

def versioned_pre_save(sender: type[models.Model], instance: models.Model, raw: bool = False,
                       update_fields: Any = None, **kwargs: Any) -> None:
    if raw:
        # Fixture loading replays stored rows; it is not a change.
        return
    untracked = UNTRACKED_FIELDS.get(sender._meta.label_lower, frozenset())
    if update_fields is not None and update_fields and set(update_fields) <= untracked:
        # A counter bump is not a configuration change: no reason, no history row.
        instance.skip_history_when_saving = True
        instance._fp_skip_history_set = True
        return
    reason = require_reason(instance, action="add" if instance._state.adding else "change")
    # simple-history reads _change_reason; give it the ambient reason too.
    instance._change_reason = reason


def versioned_post_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    # A reason covers one change: a later save of the same object must give its own.
    if getattr(instance, "_fp_skip_history_set", False):
        del instance.skip_history_when_saving
        del instance._fp_skip_history_set
    if hasattr(instance, "_change_reason"):
        del instance._change_reason


def versioned_pre_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    instance._change_reason = require_reason(instance, action="delete")


# Sealing history rows into the audit chain.

HISTORY_META_FIELDS = frozenset({"history_id", "history_date", "history_change_reason", "history_type", "history_user",
                                 "history_user_id", "history_relation", "history_relation_id"})


def canonical_value(value: Any) -> Any:
    """A JSON-stable form of a database value (as read back, so creation and verification agree)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, dict | list):
        return json.loads(json.dumps(value, sort_keys=True, default=str))
    if isinstance(value, float):
        return repr(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def history_row_hash(label: str, row: dict[str, Any]) -> str:
    """SHA-256 of one history row (every column, as stored), bound to its table."""
    canonical = json.dumps([label, {k: canonical_value(v) for k, v in sorted(row.items())}],
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def history_row_values(history_model: type[models.Model], pk: Any) -> dict[str, Any] | None:
    fields = [f.attname for f in history_model._meta.concrete_fields]
    return history_model._default_manager.filter(pk=pk).values(*fields).first()


def history_changes(history_model: type[models.Model], row: dict[str, Any]) -> dict[str, list[Any]]:
    """Field-by-field changes of one history row against the object's previous row."""
    pk_name = history_model._meta.pk.attname
    object_field = history_model.instance_type._meta.pk.attname
    fields = [f.attname for f in history_model._meta.concrete_fields if f.attname not in HISTORY_META_FIELDS]
    previous = (history_model._default_manager.filter(**{object_field: row[object_field], f"{pk_name}__lt": row[pk_name]})
                .order_by(f"-{pk_name}").values(*fields).first())
    return diff_rows(previous, row, fields)


def diff_rows(previous: dict[str, Any] | None, row: dict[str, Any], fields: list[str]) -> dict[str, list[Any]]:
    changes: dict[str, list[Any]] = {}
    for name in fields:
        new = canonical_value(row.get(name))
        old = canonical_value(previous.get(name)) if previous is not None else None
        if previous is None or old != new:
            changes[name] = [old, new]
    return changes


def history_post_create(sender: type[models.Model], history_instance: models.Model, **kwargs: Any) -> None:
    """Seal a new history row into the audit chain, in the same transaction."""
    from audit.models import AuditEvent
    from audit.services import audit_event_record

    label = sender._meta.label_lower
    row = history_row_values(sender, history_instance.pk)
    if row is None:  # pragma: no cover - the row was written a moment ago in this transaction
        return
    user = getattr(history_instance, "history_user", None)
    audit_event_record(
        kind=AuditEvent.Kind.HISTORY,
        actor=user,
        actor_label=(user.get_username() if user is not None else current_label()) or "system",
        subject_type=label,
        subject_id=str(history_instance.pk),
        reason=row.get("history_change_reason") or "",
        data={
            "model": sender.instance_type._meta.label_lower,
            "object_id": str(row[sender.instance_type._meta.pk.attname]),
            "history_type": row.get("history_type"),
            "row_hash": history_row_hash(label, row),
            "changes": history_changes(sender, row),
        },
    )


def history_models() -> list[type[models.Model]]:
    """Every simple-history model registered in the project."""
    from django.apps import apps

    return [m for m in apps.get_models() if hasattr(m, "instance_type") and any(f.name == "history_id" for f in m._meta.fields)]
