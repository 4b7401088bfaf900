"""Run the request's middleware stack in one thread under ASGI.

Every view here is synchronous. Under ASGI, Django keeps the middleware chain
asynchronous as long as each middleware supports it, so each of the ten
(Django's ``MiddlewareMixin`` ones included) hops to a worker thread and back
for its request half and again for its response half: about twenty thread
hand-offs per request, measured at about a quarter of the web process's CPU
on an approval. This sync-only middleware, placed last (innermost), makes
Django build the whole chain in sync mode: one hand-off into a thread at the
top, the middleware and the view run there, as under WSGI. Websockets do not
pass through it (Channels has its own stack).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SyncRequestStack:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)
