"""The pre-trade fast path leaves the global row alone when no global limit keeps state on it; a signal fast path.

1. ``risk_pretrade_reserve`` (same signature and decision as 0007, held to
   ``risk.rules`` by ``tests/risk/test_pretrade_fast_path.py``) starts with
   a shared advisory lock, the *counting barrier*
   (``risk.services.COUNTING_BARRIER_KEY``), and then:

   - While the global scope has no stateful limit (open orders, orders per
     minute, daily loss, drawdown, losing streak, slippage breaches): one
     UPDATE of the automation's row that checks its limits, the global
     size limits, the global row's trip flag, the kill switch and the
     automation's status, and reserves on the automation's row only.
     Checks of different automations no longer queue on the global row.
   - Otherwise (or when that UPDATE matched nothing): the 0007 path, both
     rows locked, the automation's first, and reserved on both.

   Why this stays exact is written out in ``risk.services.pretrade_check``.
2. ``risk_signal_record``: the signal-rate check of ``signal_rate_check`` in
   one statement (after the barrier, both rows locked, the automation's
   first), deciding only "passes and records"; anything else goes to the
   Python path. ``tests/risk/test_signal_fast_path.py`` holds its rows
   equal to the reference path's.
3. ``risk_window_count`` (how many entries of a window are recent) and
   ``risk_window_keep`` (a window pruned and cut to its newest entries,
   without appending), used by the two.

Every path now locks the automation's row before the global row (see
``risk.services``'s locking rules), so the order the rows are locked in is
``automation_id IS NULL, id`` rather than ``id``; while the automation's
row does not exist yet, nothing is locked and the Python path creates it.
"""

from __future__ import annotations

import importlib

from django.db import migrations

# risk.services.COUNTING_BARRIER_KEY (a test holds the two equal).
BARRIER_KEY = -4191232955067919317


def _previous():  # type: ignore[no-untyped-def]
    return importlib.import_module("risk.migrations.0007_pretrade_reserve_two_statements")


def _passes(s: str, lim: str) -> str:
    """Whether the limits ``lim`` of one scope let the order pass, on its state ``s`` as of ``p_day``.

    The boundaries of ``risk.rules.check_order`` (as in 0007): counts refuse
    at the limit, sizes pass at the limit, money compares exactly in numeric.
    A scope without a limit row (all columns null after the outer join) passes.
    """
    today = f"{s}.trading_day = p_day"
    return f"""(
            ({lim}.max_open_orders IS NULL OR {s}.open_orders < {lim}.max_open_orders)
            AND ({lim}.max_orders_per_minute IS NULL
                 OR risk_window_count({s}.order_times, p_now_s, 60.0) < {lim}.max_orders_per_minute)
            AND ({lim}.max_daily_loss IS NULL
                 OR -(CASE WHEN {today} THEN {s}.daily_realized_pnl ELSE 0 END) < {lim}.max_daily_loss)
            AND ({lim}.max_drawdown IS NULL
                 OR (CASE WHEN {today} THEN {s}.daily_peak_pnl - {s}.daily_realized_pnl ELSE 0 END)
                    < {lim}.max_drawdown)
            AND ({lim}.max_consecutive_losses IS NULL OR {s}.consecutive_losses < {lim}.max_consecutive_losses)
            AND ({lim}.max_slippage_breaches_per_day IS NULL
                 OR (CASE WHEN {today} THEN {s}.slippage_breaches_today ELSE 0 END)
                    < {lim}.max_slippage_breaches_per_day)
            AND ({lim}.max_order_qty IS NULL OR p_qty <= {lim}.max_order_qty)
            AND ({lim}.max_order_notional IS NULL
                 OR coalesce(p_qty * coalesce(p_limit, CASE WHEN p_mid > 0 THEN p_mid END) <= {lim}.max_order_notional,
                             false))
            AND ({lim}.price_collar_bps IS NULL
                 OR coalesce(p_mid > 0 AND abs(p_limit - p_mid) * 10000 <= {lim}.price_collar_bps * p_mid, false))
        )"""


def _size_passes(lim: str) -> str:
    """The limits of ``lim`` that look at the order alone (quantity, notional, collar), as in ``_passes``."""
    return f"""(
            ({lim}.max_order_qty IS NULL OR p_qty <= {lim}.max_order_qty)
            AND ({lim}.max_order_notional IS NULL
                 OR coalesce(p_qty * coalesce(p_limit, CASE WHEN p_mid > 0 THEN p_mid END) <= {lim}.max_order_notional,
                             false))
            AND ({lim}.price_collar_bps IS NULL
                 OR coalesce(p_mid > 0 AND abs(p_limit - p_mid) * 10000 <= {lim}.price_collar_bps * p_mid, false))
        )"""


# The day roll of a reserved row: a new UTC day starts with no PnL, no peak and no slippage breach.
DAY_ROLL = """
        daily_realized_pnl = CASE WHEN s.trading_day = p_day THEN s.daily_realized_pnl ELSE 0 END,
        daily_peak_pnl = CASE WHEN s.trading_day = p_day THEN s.daily_peak_pnl ELSE 0 END,
        slippage_breaches_today = CASE WHEN s.trading_day = p_day THEN s.slippage_breaches_today ELSE 0 END,
        trading_day = p_day"""

# Steps of risk_pretrade_reserve:
# 1. The counting barrier, shared: risk_limit_set takes it exclusively when it
#    changes a global stateful limit, so no check is in flight across that
#    change, and the next statement's snapshot sees the limits as they are.
# 2. No global stateful limit: one UPDATE of the automation's row (its row
#    lock is the lock; a wait re-evaluates on the newest version of the row).
# 3. Otherwise, or when 2 matched no row (a refusal, a missing row, or a
#    global stateful limit): both rows locked, the automation's first, every
#    limit of both scopes evaluated, and reserved on both.
# 4. Asynchronous commit for this transaction when the caller asked for it.
FUNCTION = f"""
CREATE OR REPLACE FUNCTION risk_window_keep(
    times double precision[], p_now_s double precision, p_window_s double precision, keep integer
) RETURNS double precision[] LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    kept double precision[];
BEGIN
    IF keep <= 0 THEN
        RETURN '{{}}';
    END IF;
    kept := array(SELECT u.t FROM unnest(times) WITH ORDINALITY AS u(t, i) WHERE u.t > p_now_s - p_window_s ORDER BY u.i);
    RETURN kept[greatest(1, cardinality(kept) - keep + 1):];
END
$$;

CREATE OR REPLACE FUNCTION risk_window_count(
    times double precision[], p_now_s double precision, p_window_s double precision
) RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT count(*) FROM unnest(times) AS t WHERE t > p_now_s - p_window_s
$$;

CREATE OR REPLACE FUNCTION risk_pretrade_reserve(
    p_automation bigint, p_day date, p_now_s double precision, p_qty numeric, p_limit numeric, p_mid numeric,
    p_async_commit boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
    ids bigint[] := '{{}}';
    keeps integer[] := '{{}}';
BEGIN
    PERFORM pg_advisory_xact_lock_shared({BARRIER_KEY});
    UPDATE risk_riskstate AS s SET {DAY_ROLL},
        open_orders = s.open_orders + 1,
        order_times = CASE WHEN coalesce(l.max_orders_per_minute, 0) <= 0 THEN '{{}}'::double precision[]
                           ELSE risk_window_push(s.order_times, p_now_s, 60.0, l.max_orders_per_minute) END
    FROM (SELECT 1) AS one LEFT JOIN risk_risklimit AS l ON l.automation_id = p_automation
    WHERE s.automation_id = p_automation AND NOT s.tripped AND {_passes("s", "l")}
      AND NOT EXISTS (SELECT 1 FROM risk_risklimit AS gl WHERE gl.automation_id IS NULL
                      AND (gl.max_open_orders IS NOT NULL OR gl.max_orders_per_minute IS NOT NULL
                           OR gl.max_daily_loss IS NOT NULL OR gl.max_drawdown IS NOT NULL
                           OR gl.max_consecutive_losses IS NOT NULL OR gl.max_slippage_breaches_per_day IS NOT NULL
                           OR NOT {_size_passes("gl")}))
      AND EXISTS (SELECT 1 FROM risk_riskstate AS g WHERE g.automation_id IS NULL AND NOT g.tripped)
      AND NOT EXISTS (SELECT 1 FROM risk_killswitch AS k WHERE k.id = 1 AND k.engaged)
      AND EXISTS (SELECT 1 FROM automations_automation AS a WHERE a.id = p_automation AND a.status = 'active');
    IF NOT FOUND THEN
        FOR r IN
            SELECT s.id, s.tripped, coalesce(l.max_orders_per_minute, 0) AS keep,
                coalesce((SELECT k.engaged FROM risk_killswitch AS k WHERE k.id = 1), false) AS kill_switch_on,
                (SELECT a.status FROM automations_automation AS a WHERE a.id = p_automation) AS status,
                {_passes("s", "l")} AS passes
            FROM (SELECT * FROM risk_riskstate WHERE automation_id = p_automation OR (automation_id IS NULL
                  AND EXISTS (SELECT 1 FROM risk_riskstate AS x WHERE x.automation_id = p_automation))
                  ORDER BY automation_id IS NULL, id FOR UPDATE) AS s
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
        UPDATE risk_riskstate AS s SET {DAY_ROLL},
            open_orders = s.open_orders + 1,
            order_times = CASE WHEN w.keep <= 0 THEN '{{}}'::double precision[]
                               ELSE risk_window_push(s.order_times, p_now_s, 60.0, w.keep) END
        FROM unnest(ids, keeps) AS w(id, keep)
        WHERE s.id = w.id;
    END IF;
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION risk_signal_record(p_automation bigint, p_day date, p_now_s double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r record;
    g_id bigint;
    a_id bigint;
    g_signal_keep integer;
    a_signal_keep integer;
    g_order_keep integer;
    a_order_keep integer;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({BARRIER_KEY});
    FOR r IN
        SELECT s.id, s.automation_id,
            coalesce(l.max_signals_per_hour, 100) AS signal_keep, coalesce(l.max_orders_per_minute, 0) AS order_keep,
            (l.max_signals_per_hour IS NULL
             OR risk_window_count(s.signal_times, p_now_s, 3600.0) < l.max_signals_per_hour)
            AS passes
        FROM (SELECT * FROM risk_riskstate WHERE automation_id = p_automation OR (automation_id IS NULL
                  AND EXISTS (SELECT 1 FROM risk_riskstate AS x WHERE x.automation_id = p_automation))
              ORDER BY automation_id IS NULL, id FOR UPDATE) AS s
        LEFT JOIN risk_risklimit AS l ON l.automation_id IS NOT DISTINCT FROM s.automation_id
    LOOP
        IF NOT r.passes THEN
            RETURN false;
        END IF;
        IF r.automation_id IS NULL THEN
            g_id := r.id;
            g_signal_keep := r.signal_keep;
            g_order_keep := r.order_keep;
        ELSE
            a_id := r.id;
            a_signal_keep := r.signal_keep;
            a_order_keep := r.order_keep;
        END IF;
    END LOOP;
    IF g_id IS NULL OR a_id IS NULL THEN
        RETURN false;
    END IF;
    UPDATE risk_riskstate AS s SET {DAY_ROLL},
        signal_times = risk_window_push(s.signal_times, p_now_s, 3600.0,
                                        CASE WHEN s.id = g_id THEN g_signal_keep ELSE a_signal_keep END),
        order_times = risk_window_keep(s.order_times, p_now_s, 60.0,
                                       CASE WHEN s.id = g_id THEN g_order_keep ELSE a_order_keep END)
    WHERE s.id IN (g_id, a_id);
    RETURN true;
END
$$;
"""  # noqa: S608 - built from constants of this file only

DROP = """
DROP FUNCTION IF EXISTS risk_signal_record(bigint, date, double precision);
DROP FUNCTION IF EXISTS risk_window_count(double precision[], double precision, double precision);
DROP FUNCTION IF EXISTS risk_window_keep(double precision[], double precision, double precision, integer);
"""


class Migration(migrations.Migration):
    dependencies = [("risk", "0007_pretrade_reserve_two_statements")]

    operations = [
        migrations.RunSQL(sql=FUNCTION, reverse_sql=[DROP, _previous().FUNCTION]),
    ]
