"""``risk_pretrade_reserve`` sets ``synchronous_commit = off`` only when its caller asks for it.

Migration 0005 always did on a reservation. That is safe only while the
caller makes a synchronous commit before the order reaches a broker, and the
execute worker no longer does (its decision commit is also the claim, and the
broker call follows it). The function now takes ``p_async_commit``; see
``risk.services.pretrade_check(synchronous_commit=...)``. Everything else in
the function is as in 0005.
"""

from __future__ import annotations

from django.db import migrations

OLD_SIGNATURE = "risk_pretrade_reserve(bigint, date, double precision, numeric, numeric, numeric)"
NEW_SIGNATURE = "risk_pretrade_reserve(bigint, date, double precision, numeric, numeric, numeric, boolean)"

FUNCTION = """
CREATE OR REPLACE FUNCTION risk_pretrade_reserve(
    p_automation bigint, p_day date, p_now_s double precision, p_qty numeric, p_limit numeric, p_mid numeric, p_async_commit boolean
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
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN true;
END
$$;
"""

OLD_FUNCTION = """
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


class Migration(migrations.Migration):
    dependencies = [("risk", "0005_pretrade_reserve_function")]

    operations = [
        migrations.RunSQL(
            sql=[f"DROP FUNCTION {OLD_SIGNATURE}", FUNCTION],
            reverse_sql=[f"DROP FUNCTION {NEW_SIGNATURE}", OLD_FUNCTION],
        ),
    ]
