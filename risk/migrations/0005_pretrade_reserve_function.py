"""The pre-trade fast path: rolling windows as float arrays and one PL/pgSQL function.

1. ``signal_times`` and ``order_times`` become ``double precision[]`` (they
   were ``jsonb``): the window is read, pruned and rewritten on every check,
   and an array of floats is far cheaper to do that with than JSON. The data
   is converted, not dropped.
2. ``risk_pretrade_reserve`` checks one order against the state and the
   limits of both scopes under the row locks and, when everything passes,
   reserves it, all in one statement. It is documented in
   ``risk.services.pretrade_check`` (the only caller) and held equal to
   ``risk.rules`` by ``tests/risk/test_pretrade_fast_path.py``.
"""

from __future__ import annotations

import django.contrib.postgres.fields
from django.db import migrations, models

TO_ARRAY = """
CREATE FUNCTION pg_temp.risk_jsonb_floats(value jsonb) RETURNS double precision[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(e.t::double precision ORDER BY e.i), '{}')
    FROM jsonb_array_elements_text(value) WITH ORDINALITY AS e(t, i)
$$;
ALTER TABLE risk_riskstate
    ALTER COLUMN signal_times TYPE double precision[] USING pg_temp.risk_jsonb_floats(signal_times),
    ALTER COLUMN order_times TYPE double precision[] USING pg_temp.risk_jsonb_floats(order_times);
"""

TO_JSONB = """
ALTER TABLE risk_riskstate
    ALTER COLUMN signal_times TYPE jsonb USING to_jsonb(signal_times),
    ALTER COLUMN order_times TYPE jsonb USING to_jsonb(order_times);
"""

# Steps (the same as risk.services.pretrade_check's locked path, but only the
# "everything passes" outcome is decided here):
# 1. Lock the global and the automation's risk-state rows in primary-key order
#    (the order every other path takes). A missing row answers false.
# 2. False when the kill switch is on, either scope is tripped, or the
#    automation is not active.
# 3. For both scopes, on the state as of today (a new UTC day starts with no
#    PnL, no peak and no slippage breach) and the orders of the last minute:
#    false when any limit would refuse the order. Money compares exactly in
#    numeric; the collar as |limit - mid| * 10000 > collar * mid.
# 4. Otherwise reserve on both rows (roll the day, one more open order, this
#    order's time in the window, which keeps the newest max_orders_per_minute
#    entries, none when unset: see risk.services.ORDER_WINDOW_UNSET_KEEP), set
#    synchronous_commit off for this transaction, and answer true.
FUNCTION = """
CREATE OR REPLACE FUNCTION risk_order_passes(
    s risk_riskstate, l risk_risklimit, p_day date, p_now_s double precision,
    p_qty numeric, p_limit numeric, p_mid numeric
) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
DECLARE
    today boolean := s.trading_day = p_day;
    pnl numeric := CASE WHEN today THEN s.daily_realized_pnl ELSE 0 END;
    peak numeric := CASE WHEN today THEN s.daily_peak_pnl ELSE 0 END;
    slips integer := CASE WHEN today THEN s.slippage_breaches_today ELSE 0 END;
    mid numeric := CASE WHEN p_mid > 0 THEN p_mid END;
    price numeric;
BEGIN
    IF l.id IS NULL THEN
        RETURN true;
    END IF;
    IF l.max_open_orders IS NOT NULL AND s.open_orders >= l.max_open_orders THEN
        RETURN false;
    END IF;
    IF l.max_orders_per_minute IS NOT NULL
       AND (SELECT count(*) FROM unnest(s.order_times) AS t WHERE t > p_now_s - 60.0) >= l.max_orders_per_minute THEN
        RETURN false;
    END IF;
    IF l.max_daily_loss IS NOT NULL AND -pnl >= l.max_daily_loss THEN
        RETURN false;
    END IF;
    IF l.max_drawdown IS NOT NULL AND peak - pnl >= l.max_drawdown THEN
        RETURN false;
    END IF;
    IF l.max_consecutive_losses IS NOT NULL AND s.consecutive_losses >= l.max_consecutive_losses THEN
        RETURN false;
    END IF;
    IF l.max_slippage_breaches_per_day IS NOT NULL AND slips >= l.max_slippage_breaches_per_day THEN
        RETURN false;
    END IF;
    IF l.max_order_qty IS NOT NULL AND p_qty > l.max_order_qty THEN
        RETURN false;
    END IF;
    IF l.max_order_notional IS NOT NULL THEN
        price := coalesce(p_limit, mid);
        IF price IS NULL OR p_qty * price > l.max_order_notional THEN
            RETURN false;
        END IF;
    END IF;
    IF l.price_collar_bps IS NOT NULL THEN
        IF mid IS NULL OR p_limit IS NULL OR abs(p_limit - mid) * 10000 > l.price_collar_bps * mid THEN
            RETURN false;
        END IF;
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION risk_window_push(
    times double precision[], p_now_s double precision, p_window_s double precision, keep integer
) RETURNS double precision[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    kept double precision[];
BEGIN
    IF keep <= 0 THEN
        RETURN '{}';
    END IF;
    kept := array(SELECT u.t FROM unnest(times) WITH ORDINALITY AS u(t, i) WHERE u.t > p_now_s - p_window_s ORDER BY u.i)
            || p_now_s;
    RETURN kept[greatest(1, cardinality(kept) - keep + 1):];
END
$$;

CREATE OR REPLACE FUNCTION risk_pretrade_reserve(
    p_automation bigint, p_day date, p_now_s double precision, p_qty numeric, p_limit numeric, p_mid numeric
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r risk_riskstate;
    g risk_riskstate;
    a risk_riskstate;
    gl risk_risklimit;
    al risk_risklimit;
BEGIN
    FOR r IN SELECT * FROM risk_riskstate WHERE automation_id IS NULL OR automation_id = p_automation
             ORDER BY id FOR UPDATE LOOP
        IF r.automation_id IS NULL THEN
            g := r;
        ELSE
            a := r;
        END IF;
    END LOOP;
    IF g.id IS NULL OR a.id IS NULL OR g.tripped OR a.tripped THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM risk_killswitch WHERE id = 1 AND engaged) THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM automations_automation WHERE id = p_automation AND status = 'active') THEN
        RETURN false;
    END IF;
    SELECT * INTO gl FROM risk_risklimit WHERE automation_id IS NULL;
    SELECT * INTO al FROM risk_risklimit WHERE automation_id = p_automation;
    IF NOT risk_order_passes(g, gl, p_day, p_now_s, p_qty, p_limit, p_mid)
       OR NOT risk_order_passes(a, al, p_day, p_now_s, p_qty, p_limit, p_mid) THEN
        RETURN false;
    END IF;
    FOREACH r IN ARRAY ARRAY[g, a] LOOP
        UPDATE risk_riskstate SET
            daily_realized_pnl = CASE WHEN r.trading_day = p_day THEN r.daily_realized_pnl ELSE 0 END,
            daily_peak_pnl = CASE WHEN r.trading_day = p_day THEN r.daily_peak_pnl ELSE 0 END,
            slippage_breaches_today = CASE WHEN r.trading_day = p_day THEN r.slippage_breaches_today ELSE 0 END,
            trading_day = p_day,
            open_orders = r.open_orders + 1,
            order_times = risk_window_push(
                r.order_times, p_now_s, 60.0,
                coalesce(CASE WHEN r.id = g.id THEN gl.max_orders_per_minute ELSE al.max_orders_per_minute END, 0))
        WHERE id = r.id;
    END LOOP;
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN true;
END
$$;
"""

DROP_FUNCTION = """
DROP FUNCTION IF EXISTS risk_pretrade_reserve(bigint, date, double precision, numeric, numeric, numeric);
DROP FUNCTION IF EXISTS risk_window_push(double precision[], double precision, double precision, integer);
DROP FUNCTION IF EXISTS risk_order_passes(risk_riskstate, risk_risklimit, date, double precision, numeric, numeric, numeric);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("risk", "0004_alter_historicalkillswitch_history_change_reason_and_more"),
        ("automations", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            sql=TO_ARRAY,
            reverse_sql=TO_JSONB,
            state_operations=[
                migrations.AlterField(
                    model_name="riskstate",
                    name="signal_times",
                    field=django.contrib.postgres.fields.ArrayField(
                        base_field=models.FloatField(),
                        blank=True,
                        default=list,
                        size=None,
                        help_text="Epoch seconds of signals in the last hour.",
                    ),
                ),
                migrations.AlterField(
                    model_name="riskstate",
                    name="order_times",
                    field=django.contrib.postgres.fields.ArrayField(
                        base_field=models.FloatField(),
                        blank=True,
                        default=list,
                        size=None,
                        help_text="Epoch seconds of orders in the last minute.",
                    ),
                ),
            ],
        ),
        migrations.RunSQL(sql=FUNCTION, reverse_sql=DROP_FUNCTION),
        # A handful of rows updated by every check: leave room on each page
        # for the next version (so updates stay HOT) and vacuum after a
        # fixed number of dead versions rather than a share of a tiny table.
        migrations.RunSQL(
            sql="ALTER TABLE risk_riskstate SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, "
            "autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0)",
            reverse_sql="ALTER TABLE risk_riskstate RESET (fillfactor, autovacuum_vacuum_scale_factor, "
            "autovacuum_vacuum_threshold, autovacuum_vacuum_cost_delay)",
        ),
    ]
