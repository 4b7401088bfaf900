"""Websocket routes of the automations app, included by ``trading.routing``."""

from __future__ import annotations

from django.urls import path

from automations.consumers import SignalConsumer

websocket_urlpatterns = [
    path("ws/signals/", SignalConsumer.as_asgi()),
]
