"""Thin Celery tasks of the risk layer (queue ``detect``, see ``trading.queues``)."""

from __future__ import annotations

from celery import shared_task

from risk import services
from risk.models import Alert


@shared_task(bind=True, name="risk.tasks.alert_deliver_task", acks_late=True, max_retries=None, ignore_result=True)
def alert_deliver_task(self, alert_id: int) -> str:  # type: ignore[no-untyped-def]
    """Deliver one alert; retry with exponential backoff until delivered or out of attempts."""
    state = services.alert_deliver(alert_id=alert_id)
    if state == Alert.Delivery.PENDING:
        attempts = Alert.objects.filter(pk=alert_id).values_list("attempts", flat=True).first() or 1
        raise self.retry(countdown=services.alert_retry_delay_s(attempts))
    return state


@shared_task(name="risk.tasks.alert_raise_task", ignore_result=True)
def alert_raise_task(kind: str, severity: str, subject: str, message: str, dedup_key: str | None = None) -> int:
    """How layers that may not import risk (ingestion) raise an alert, by task name."""
    return services.alert_raise(kind=kind, severity=severity, subject=subject, message=message, dedup_key=dedup_key).pk


@shared_task(name="risk.tasks.alerts_redeliver_pending_task", ignore_result=True)
def alerts_redeliver_pending_task() -> int:
    return services.alerts_redeliver_pending()


@shared_task(name="risk.tasks.breaker_trip_ensure_task", acks_late=True, ignore_result=True)
def breaker_trip_ensure_task(
    trip_key: str, automation_id: int | None, limit: str, value: str, threshold: str, message: str, tripped_at: str
) -> bool:
    """The durable copy of a breaker trip: writes it if the order transaction that made it rolled back."""
    return services.breaker_trip_ensure(
        trip_key=trip_key, automation_id=automation_id, limit=limit, value=value, threshold=threshold,
        message=message, tripped_at=tripped_at,
    )
