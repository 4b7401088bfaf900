"""``risk_pretrade_reserve`` in two statements instead of ten: one locks and evaluates, one reserves.

The same decision as 0005/0006 (held equal to ``risk.rules`` by
``tests/risk/test_pretrade_fast_path.py``), with less work per check while
the global row is locked:

1. One query locks both risk-state rows in primary-key order (a materialized
   sub-select ``FOR UPDATE``, as the locked Python path does) and returns,
   per row, whether that scope's limits let the order pass, with the kill
   switch and the automation's status read in the same query.
2. One UPDATE reserves on both rows (the order-rate window is rewritten only
   where a rate limit is set).
"""

from __future__ import annotations

import importlib

from django.db import migrations


def _previous():  # type: ignore[no-untyped-def]
    return importlib.import_module("risk.migrations.0006_pretrade_reserve_commit_mode")


FUNCTION = """
CREATE OR REPLACE FUNCTION risk_pretrade_reserve(
    p_automation bigint, p_day date, p_now_s double precision, p_qty numeric, p_limit numeric, p_mid numeric,
    p_async_commit boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
    ids bigint[] := '{}';
    keeps integer[] := '{}';
BEGIN
    FOR r IN
        SELECT s.id, s.tripped, coalesce(l.max_orders_per_minute, 0) AS keep,
            coalesce((SELECT k.engaged FROM risk_killswitch AS k WHERE k.id = 1), false) AS kill_switch_on,
            (SELECT a.status FROM automations_automation AS a WHERE a.id = p_automation) AS status,
            (l.max_open_orders IS NULL OR s.open_orders < l.max_open_orders)
            AND (l.max_orders_per_minute IS NULL
                 OR (SELECT count(*) FROM unnest(s.order_times) AS t WHERE t > p_now_s - 60.0) < l.max_orders_per_minute)
            AND (l.max_daily_loss IS NULL
                 OR -(CASE WHEN s.trading_day = p_day THEN s.daily_realized_pnl ELSE 0 END) < l.max_daily_loss)
            AND (l.max_drawdown IS NULL
                 OR (CASE WHEN s.trading_day = p_day THEN s.daily_peak_pnl - s.daily_realized_pnl ELSE 0 END)
                    < l.max_drawdown)
            AND (l.max_consecutive_losses IS NULL OR s.consecutive_losses < l.max_consecutive_losses)
            AND (l.max_slippage_breaches_per_day IS NULL
                 OR (CASE WHEN s.trading_day = p_day THEN s.slippage_breaches_today ELSE 0 END)
                    < l.max_slippage_breaches_per_day)
            AND (l.max_order_qty IS NULL OR p_qty <= l.max_order_qty)
            AND (l.max_order_notional IS NULL
                 OR coalesce(p_qty * coalesce(p_limit, CASE WHEN p_mid > 0 THEN p_mid END) <= l.max_order_notional,
                             false))
            AND (l.price_collar_bps IS NULL
                 OR coalesce(p_mid > 0 AND abs(p_limit - p_mid) * 10000 <= l.price_collar_bps * p_mid, false))
            AS passes
        FROM (SELECT * FROM risk_riskstate WHERE automation_id IS NULL OR automation_id = p_automation
              ORDER BY id FOR UPDATE) AS s
        LEFT JOIN risk_risklimit AS l ON l.automation_id IS NOT DISTINCT FROM s.automation_id
    LOOP
        IF r.tripped OR NOT r.passes OR r.kill_switch_on OR r.status IS DISTINCT FROM 'active' THEN
            RETURN false;
        END IF;
        n := n + 1;
        ids := ids || r.id;
        keeps := keeps || r.keep;
    END LOOP;
    IF n <> 2 THEN
        RETURN false;
    END IF;
    UPDATE risk_riskstate AS s SET
        daily_realized_pnl = CASE WHEN s.trading_day = p_day THEN s.daily_realized_pnl ELSE 0 END,
        daily_peak_pnl = CASE WHEN s.trading_day = p_day THEN s.daily_peak_pnl ELSE 0 END,
        slippage_breaches_today = CASE WHEN s.trading_day = p_day THEN s.slippage_breaches_today ELSE 0 END,
        trading_day = p_day,
        open_orders = s.open_orders + 1,
        order_times = CASE WHEN w.keep <= 0 THEN '{}'::double precision[]
                           ELSE risk_window_push(s.order_times, p_now_s, 60.0, w.keep) END
    FROM unnest(ids, keeps) AS w(id, keep)
    WHERE s.id = w.id;
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN true;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("risk", "0006_pretrade_reserve_commit_mode")]

    operations = [
        migrations.RunSQL(sql=FUNCTION, reverse_sql=_previous().FUNCTION),
    ]
