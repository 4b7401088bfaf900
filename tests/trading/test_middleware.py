"""Under ASGI the middleware chain is built in sync mode: one thread hand-off at the top, not one per middleware."""

from __future__ import annotations

from asgiref.sync import SyncToAsync, iscoroutinefunction
from django.core.handlers.asgi import ASGIHandler
from django.test import override_settings


def test_the_asgi_chain_is_one_sync_call_behind_a_single_hand_off() -> None:
    chain = ASGIHandler()._middleware_chain
    assert isinstance(chain, SyncToAsync)
    assert not iscoroutinefunction(chain.func)


def test_without_the_sync_stack_django_keeps_the_chain_asynchronous(settings) -> None:
    stack = [m for m in settings.MIDDLEWARE if m != "trading.middleware.SyncRequestStack"]
    with override_settings(MIDDLEWARE=stack):
        chain = ASGIHandler()._middleware_chain
    assert not isinstance(chain, SyncToAsync)
    assert iscoroutinefunction(chain)
