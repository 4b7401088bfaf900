"""The live signal feed: push-only, for signed-in users whose session passed OTP.

Modelled on paperless-ngx's ``StatusConsumer``: authentication happens in
``connect`` and the consumer only relays what services publish to the
``signals`` group. Nothing a client sends is acted on; approvals go over
HTTP with their own OTP. Foreign origins never reach this code:
``AllowedHostsOriginValidator`` wraps the websocket router in
``trading.asgi``.

OTP: django-otp's ``OTPMiddleware`` is HTTP middleware, so the scope has no
``user.is_verified()``. The session keeps the verifying device's persistent
id under ``django_otp.DEVICE_ID_SESSION_KEY``; we load that device and
accept only when it exists, is confirmed and belongs to the scope's user,
the same test the middleware applies.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from automations.selectors import SignalMessage
from automations.services import SIGNALS_GROUP

# Close codes in the 4000-4999 application range, so the page can say why.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_VERIFIED = 4403


def session_otp_verified(user: Any, session: Any) -> bool:
    """Whether ``session`` holds a confirmed OTP device of ``user`` (django-otp's own rule)."""
    if user is None or not getattr(user, "is_authenticated", False) or session is None:
        return False
    persistent_id = session.get(DEVICE_ID_SESSION_KEY)
    if not persistent_id:
        return False
    device = Device.from_persistent_id(persistent_id)
    return device is not None and device.user_id == user.pk and bool(device.confirmed)


class SignalConsumer(AsyncJsonWebsocketConsumer):
    groups: list[str] = []

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        verified = await database_sync_to_async(session_otp_verified)(user, self.scope.get("session"))
        if not verified:
            await self.close(code=CLOSE_NOT_VERIFIED)
            return
        await self.channel_layer.group_add(SIGNALS_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(SIGNALS_GROUP, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Push-only: the feed ignores whatever a client sends.
        return

    async def signal(self, event: SignalMessage) -> None:
        await self.send_json({"type": "signal", "seq": event["seq"], "signal": event["signal"]})
