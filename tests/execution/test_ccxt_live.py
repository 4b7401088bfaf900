"""The ccxt live adapter against a local server that speaks Binance USD-M REST."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from execution.brokers import BrokerOrderStatus, OrderRequest
from execution.brokers.ccxt_live import CcxtBroker
from execution.brokers.credentials import BrokerCredentials, CredentialsMissing, broker_credentials
from tests.execution.fake_venue import FakeBinanceFutures

KEY, SECRET = "test-key-0123456789", "test-secret-abcdef"


@pytest.fixture
def venue():
    server = FakeBinanceFutures(api_key=KEY, api_secret=SECRET, market_price="100.00")
    yield server
    server.close()


@pytest.fixture
def broker(venue, monkeypatch):
    monkeypatch.setenv("FP_BROKER_API_KEY", KEY)
    monkeypatch.setenv("FP_BROKER_API_SECRET", SECRET)
    return CcxtBroker(exchange_id="binanceusdm", sandbox=True, api_base_url=venue.url)


def test_it_submits_with_the_client_order_id_and_signed_credentials(broker, venue):
    order = broker.submit(OrderRequest("fp-41", "BTCUSDT", "buy", Decimal("0.010"), Decimal("100.50")))
    assert order.client_order_id == "fp-41"
    assert order.status == BrokerOrderStatus.FILLED
    assert (order.filled_qty, order.avg_price) == (Decimal("0.01"), Decimal("100.00"))
    assert [f.fill_id for f in order.fills] == [f"{order.broker_order_id}-agg"]
    assert venue.orders["fp-41"]["side"] == "BUY"
    assert ("POST", "/fapi/v1/order") in venue.requests


def test_a_second_submit_of_the_same_client_order_id_returns_the_first_order(broker, venue):
    first = broker.submit(OrderRequest("fp-42", "BTCUSDT", "sell", Decimal("0.010"), Decimal("101.00")))
    again = broker.submit(OrderRequest("fp-42", "BTCUSDT", "sell", Decimal("0.010"), Decimal("101.00")))
    assert first.status == BrokerOrderStatus.OPEN
    assert again.broker_order_id == first.broker_order_id
    assert venue.submissions == 1 and len(venue.orders) == 1


def test_it_fetches_lists_and_cancels_by_client_order_id(broker, venue):
    assert broker.fetch_order("fp-none", symbol="BTCUSDT") is None
    broker.submit(OrderRequest("fp-43", "BTCUSDT", "buy", Decimal("0.020"), Decimal("99.00")))
    fetched = broker.fetch_order("fp-43", symbol="BTCUSDT")
    assert fetched.status == BrokerOrderStatus.OPEN and fetched.quantity == Decimal("0.02")
    assert [o.client_order_id for o in broker.open_orders()] == ["fp-43"]
    cancelled = broker.cancel("fp-43", symbol="BTCUSDT")
    assert cancelled.status == BrokerOrderStatus.CANCELLED
    assert broker.open_orders() == []
    assert venue.orders["fp-43"]["status"] == "CANCELED"


def test_a_wrong_secret_is_refused_by_the_venue(venue):
    from execution.brokers import BrokerRejected

    bad = CcxtBroker(credentials=BrokerCredentials(api_key=KEY, api_secret="wrong"), api_base_url=venue.url)
    with pytest.raises(BrokerRejected):
        bad.submit(OrderRequest("fp-44", "BTCUSDT", "buy", Decimal("0.010"), Decimal("100.50")))
    assert venue.orders == {}


def test_credentials_come_from_the_environment_or_a_file_and_are_never_shown(tmp_path):
    with pytest.raises(CredentialsMissing):
        broker_credentials({})
    creds = broker_credentials({"FP_BROKER_API_KEY": KEY, "FP_BROKER_API_SECRET": SECRET})
    assert (creds.api_key, creds.api_secret) == (KEY, SECRET)
    assert SECRET not in repr(creds) and KEY not in repr(creds)
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"api_key": "file-key-123456", "api_secret": "file-secret"}))
    from_file = broker_credentials({"FP_BROKER_CREDENTIALS_FILE": str(path), "FP_BROKER_API_KEY": KEY})
    assert from_file.api_secret == "file-secret"
