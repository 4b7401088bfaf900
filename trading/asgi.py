"""ASGI entry point: HTTP (Django, admin static files) and websockets (Channels)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")
# Pooled database connections: see trading.settings (each ASGI request runs in a new thread).
os.environ.setdefault("DATABASE_POOL_SIZE", "10")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from trading.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

if os.environ.get("FP_PROCESS_NAME"):
    # The web process proves it is alive like every other process.
    from trading.heartbeat import HeartbeatThread

    HeartbeatThread(os.environ["FP_PROCESS_NAME"]).start()
