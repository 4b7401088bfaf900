"""Verification of the audit chain and of every history table against it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from audit.history import history_models, history_row_hash
from audit.models import AuditEvent
from audit.protection import installed_triggers, missing_protection
from audit.services import GENESIS_HASH, audit_event_hash


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class VerifyResult:
    events_checked: int = 0
    history_rows_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events_checked": self.events_checked, "history_rows_checked": self.history_rows_checked,
                "problems": [str(p) for p in self.problems]}


_EVENT_FIELDS = ("id", "at", "actor_id", "actor_label", "kind", "subject_type", "subject_id", "reason", "data",
                 "prev_hash", "hash")


def verify_events(result: VerifyResult, *, progress: Callable[[int], None] | None = None) -> dict[str, dict[int, tuple[int, str]]]:
    """Walk the chain in id order; return the history seals found on the way (table -> history_id -> (event id, row hash)).

    An edited event fails its own hash; a deleted one leaves the next event's
    ``prev_hash`` pointing at a hash that is not its predecessor's; an event
    inserted out of order points at an older event than its predecessor.
    """
    seals: dict[str, dict[int, tuple[int, str]]] = {}
    seen_hashes: dict[str, int] = {}
    previous_hash, previous_id = GENESIS_HASH, None
    rows = AuditEvent.objects.order_by("id").values_list(*_EVENT_FIELDS).iterator(chunk_size=5000)
    for event_id, at, actor_id, label, kind, subject_type, subject_id, reason, data, prev_hash, digest in rows:
        result.events_checked += 1
        where = f"audit event #{event_id}"
        expected = audit_event_hash(prev_hash=prev_hash, at_iso=at.isoformat(), actor_id=actor_id, actor_label=label,
                                    kind=kind, subject_type=subject_type, subject_id=subject_id, reason=reason, data=data)
        if expected != digest:
            result.problems.append(Problem(where, "its content does not match its hash: the event was edited"))
        if prev_hash != previous_hash:
            if prev_hash in seen_hashes:
                result.problems.append(Problem(where, f"it chains to event #{seen_hashes[prev_hash]}, not to its predecessor "
                                                      f"#{previous_id}: it was inserted out of order"))
            else:
                after = f"after event #{previous_id}" if previous_id else "at the start of the chain"
                result.problems.append(Problem(where, f"its predecessor is missing: an event {after} was deleted "
                                                      "(or this event was inserted with a forged link)"))
        seen_hashes[digest] = event_id
        previous_hash, previous_id = digest, event_id
        if kind == AuditEvent.Kind.HISTORY and isinstance(data, dict):
            try:
                seals.setdefault(subject_type, {})[int(subject_id)] = (event_id, str(data.get("row_hash", "")))
            except ValueError:
                result.problems.append(Problem(where, f"history seal with a non-numeric row id {subject_id!r}"))
        if progress and result.events_checked % 100_000 == 0:
            progress(result.events_checked)
    return seals


def verify_history(result: VerifyResult, seals: dict[str, dict[int, tuple[int, str]]]) -> None:
    """Every history row must match the seal written when it was created, and every seal must find its row."""
    for model in history_models():
        label = model._meta.label_lower
        table_seals = seals.pop(label, {})
        fields = [f.attname for f in model._meta.concrete_fields]
        for row in model._default_manager.order_by("pk").values(*fields).iterator(chunk_size=5000):
            result.history_rows_checked += 1
            history_id = row[model._meta.pk.attname]
            where = f"history row {label}#{history_id}"
            seal = table_seals.pop(history_id, None)
            if seal is None:
                result.problems.append(Problem(where, "no audit event seals it: it was inserted behind the application's back"))
            elif history_row_hash(label, row) != seal[1]:
                result.problems.append(Problem(where, f"it does not match its seal (audit event #{seal[0]}): it was edited"))
        for history_id, (event_id, _) in sorted(table_seals.items()):
            result.problems.append(Problem(f"history row {label}#{history_id}",
                                           f"sealed by audit event #{event_id} but missing: it was deleted"))
    for label, table_seals in seals.items():
        for history_id, (event_id, _) in sorted(table_seals.items()):
            result.problems.append(Problem(f"history row {label}#{history_id}",
                                           f"sealed by audit event #{event_id} but its table is not a known history table"))


def verify_protection(result: VerifyResult) -> None:
    for problem in missing_protection(history_models()):
        result.problems.append(Problem("database", problem))
    present = installed_triggers(AuditEvent._meta.db_table)
    for trigger in AuditEvent._meta.triggers:
        name = trigger.get_pgid(AuditEvent)
        if not present.get(name):
            result.problems.append(Problem("database", f"{AuditEvent._meta.db_table}: trigger {name} is missing or disabled"))


def verify_audit(*, progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Verify the audit chain, every history table against it, and the database guards."""
    result = VerifyResult()
    seals = verify_events(result, progress=progress)
    verify_history(result, seals)
    verify_protection(result)
    return result
