from __future__ import annotations

from automations.routing import websocket_urlpatterns as automation_routes

websocket_urlpatterns: list = [*automation_routes]
