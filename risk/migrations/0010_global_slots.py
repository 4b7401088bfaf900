"""Global count limits become slot rows claimed without waiting; a check no longer locks or writes the global row.

1. ``risk_globalslot`` (``risk.models.GlobalSlot``): a global open-order or
   orders-per-minute limit of M split into up to ``GLOBAL_SLOT_STRIPES``
   rows whose capacities add up to M, built by ``risk_global_slots_rebuild``
   (from the automations' open-order counts, keeping the order times of the
   last minute) whenever ``risk.services.risk_limit_set`` changes one of the
   two limits, under the counting barrier held exclusively; built here once
   for limits already set.
2. ``risk_pretrade_reserve`` (same signature): after the counting barrier,
   one read of the global limits, one UPDATE of the automation's row that
   checks every limit of that scope, the global size limits, the global
   trailing limits (daily loss, drawdown, losing streak, slippage breaches)
   on the global row read without a lock, the trip flags, the kill switch
   and the automation's status; then, for each global count limit set, one
   slot claimed with ``FOR UPDATE SKIP LOCKED``. When no free slot is found
   (all are full, or those with room are held by transactions in flight)
   the function undoes its reservation and answers false: the locked path
   (``risk.services._pretrade_check_locked``) waits for the slots and
   decides exactly. A pass with a global trailing limit set marks the
   transaction (``risk.global_read_unlocked``): a booking later in the same
   transaction re-checks what the check read (see ``order_closed``).
3. ``risk_global_slot_release``: frees one unit of the open-order slots
   (the excess row first), waiting for the slots only when every slot that
   holds a count is held by a transaction in flight.

Why this is exact: ``risk.services.pretrade_check``.
"""

from __future__ import annotations

import importlib

import django.contrib.postgres.fields
from django.db import migrations, models

# risk.services.COUNTING_BARRIER_KEY and GLOBAL_SLOT_STRIPES (a test holds them equal).
BARRIER_KEY = -4191232955067919317
GLOBAL_SLOT_STRIPES = 16


def _previous():  # type: ignore[no-untyped-def]
    return importlib.import_module("risk.migrations.0009_pretrade_regime_first")


_P8 = importlib.import_module("risk.migrations.0008_pretrade_global_row_unlocked")


def _trailing_passes(s: str, lim: str) -> str:
    """The trailing limits of ``lim`` on the state ``s`` as of ``p_day``, with the boundaries of 0008's ``_passes``."""
    today = f"{s}.trading_day = p_day"
    return f"""(
            ({lim}.max_daily_loss IS NULL
             OR -(CASE WHEN {today} THEN {s}.daily_realized_pnl ELSE 0 END) < {lim}.max_daily_loss)
            AND ({lim}.max_drawdown IS NULL
                 OR (CASE WHEN {today} THEN {s}.daily_peak_pnl - {s}.daily_realized_pnl ELSE 0 END) < {lim}.max_drawdown)
            AND ({lim}.max_consecutive_losses IS NULL OR {s}.consecutive_losses < {lim}.max_consecutive_losses)
            AND ({lim}.max_slippage_breaches_per_day IS NULL
                 OR (CASE WHEN {today} THEN {s}.slippage_breaches_today ELSE 0 END) < {lim}.max_slippage_breaches_per_day)
        )"""


# Undo this call's reservation on the automation's row (still locked by it). The order window got this
# order's time appended and nothing else dropped but entries older than the window: a pass means it held
# fewer in-window entries than it keeps.
_UNDO_AUTOMATION = """UPDATE risk_riskstate SET open_orders = open_orders - 1,
                order_times = order_times[1:cardinality(order_times) - 1] WHERE id = a_id;"""

# Steps of risk_pretrade_reserve:
# 1. The counting barrier, shared (risk_limit_set takes it exclusively to change a global count limit
#    and rebuild its slots), then the global limits, read once.
# 2. One UPDATE of the automation's row: every limit of its own, the global size and trailing limits,
#    the trip flags, the kill switch, the status. The global row is read, not locked.
# 3. A global open-order limit: claim a slot with room (none while the excess row holds a count).
# 4. A global orders-per-minute limit: claim a slot with fewer than its capacity in the last minute.
# 5. No slot in 3 or 4: undo 2 (and 3) and answer false; the locked path decides.
# 6. Mark the transaction when a global trailing limit was read unlocked; asynchronous commit on request.
FUNCTION = f"""
CREATE OR REPLACE FUNCTION risk_global_slots_rebuild(p_stripes integer, p_now_s double precision)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m_open integer;
    m_rate integer;
    total bigint;
    kept double precision[];
BEGIN
    SELECT gl.max_open_orders, gl.max_orders_per_minute INTO m_open, m_rate
    FROM risk_risklimit AS gl WHERE gl.automation_id IS NULL;
    kept := array(SELECT u.t FROM risk_globalslot AS s, unnest(s.times) AS u(t)
                  WHERE s.kind = 'order_rate' AND u.t > p_now_s - 60.0 ORDER BY u.t);
    DELETE FROM risk_globalslot;
    IF m_open IS NOT NULL THEN
        SELECT coalesce(sum(st.open_orders), 0) INTO total FROM risk_riskstate AS st WHERE st.automation_id IS NOT NULL;
        INSERT INTO risk_globalslot (kind, n, capacity, used, times)
        SELECT 'open_orders', c.n, c.capacity, least(c.capacity, greatest(0, total - c.before)), '{{}}'
        FROM (SELECT w.n, w.capacity, (sum(w.capacity) OVER (ORDER BY w.n) - w.capacity)::bigint AS before
              FROM (SELECT i AS n, m_open / greatest(1, least(m_open, p_stripes))
                                      + (i <= m_open % greatest(1, least(m_open, p_stripes)))::integer
                           AS capacity
                    FROM generate_series(1, least(m_open, p_stripes)) AS i) AS w) AS c;
        INSERT INTO risk_globalslot (kind, n, capacity, used, times)
        VALUES ('open_orders', 0, 0, greatest(0, total - m_open), '{{}}');
    END IF;
    IF m_rate IS NOT NULL THEN
        kept := kept[greatest(1, cardinality(kept) - m_rate + 1):];
        INSERT INTO risk_globalslot (kind, n, capacity, used, times)
        SELECT 'order_rate', c.n, c.capacity, 0, coalesce(kept[c.before + 1:c.before + c.capacity], '{{}}')
        FROM (SELECT w.n, w.capacity, (sum(w.capacity) OVER (ORDER BY w.n) - w.capacity)::integer AS before
              FROM (SELECT i AS n, m_rate / greatest(1, least(m_rate, p_stripes))
                                      + (i <= m_rate % greatest(1, least(m_rate, p_stripes)))::integer
                           AS capacity
                    FROM generate_series(1, least(m_rate, p_stripes)) AS i) AS w) AS c;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION risk_global_slot_release() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    UPDATE risk_globalslot AS c SET used = c.used - 1
    WHERE c.id = (SELECT f.id FROM risk_globalslot AS f WHERE f.kind = 'open_orders' AND f.used > 0
                  ORDER BY f.n LIMIT 1 FOR UPDATE OF f SKIP LOCKED);
    IF FOUND THEN
        RETURN true;
    END IF;
    -- Every slot that holds a count is held by a transaction in flight: wait for all of them (in the
    -- order every path locks them) and free a unit of what they committed.
    PERFORM 1 FROM risk_globalslot AS f WHERE f.kind = 'open_orders' ORDER BY f.n FOR UPDATE OF f;
    UPDATE risk_globalslot AS c SET used = c.used - 1
    WHERE c.id = (SELECT f.id FROM risk_globalslot AS f WHERE f.kind = 'open_orders' AND f.used > 0
                  ORDER BY f.n LIMIT 1);
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION risk_pretrade_reserve(
    p_automation bigint, p_day date, p_now_s double precision, p_qty numeric, p_limit numeric, p_mid numeric,
    p_async_commit boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    gl risk_risklimit;
    a_id bigint;
    o_id bigint;
    r_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({BARRIER_KEY});
    SELECT * INTO gl FROM risk_risklimit AS x WHERE x.automation_id IS NULL;
    UPDATE risk_riskstate AS s SET {_P8.DAY_ROLL},
        open_orders = s.open_orders + 1,
        order_times = CASE WHEN coalesce(l.max_orders_per_minute, 0) <= 0 THEN '{{}}'::double precision[]
                           ELSE risk_window_push(s.order_times, p_now_s, 60.0, l.max_orders_per_minute) END
    FROM (SELECT 1) AS one LEFT JOIN risk_risklimit AS l ON l.automation_id = p_automation
    WHERE s.automation_id = p_automation AND NOT s.tripped AND {_P8._passes("s", "l")}
      AND {_P8._size_passes("gl")}
      AND EXISTS (SELECT 1 FROM risk_riskstate AS g WHERE g.automation_id IS NULL AND NOT g.tripped
                  AND {_trailing_passes("g", "gl")})
      AND NOT EXISTS (SELECT 1 FROM risk_killswitch AS k WHERE k.id = 1 AND k.engaged)
      AND EXISTS (SELECT 1 FROM automations_automation AS a WHERE a.id = p_automation AND a.status = 'active')
    RETURNING s.id INTO a_id;
    IF a_id IS NULL THEN
        RETURN false;
    END IF;
    IF gl.max_open_orders IS NOT NULL THEN
        UPDATE risk_globalslot AS c SET used = c.used + 1
        WHERE c.id = (SELECT f.id FROM risk_globalslot AS f
                      WHERE f.kind = 'open_orders' AND f.n > 0 AND f.used < f.capacity
                        AND NOT EXISTS (SELECT 1 FROM risk_globalslot AS d
                                        WHERE d.kind = 'open_orders' AND d.n = 0 AND d.used > 0)
                      ORDER BY f.n LIMIT 1 FOR UPDATE OF f SKIP LOCKED)
        RETURNING c.id INTO o_id;
        IF o_id IS NULL THEN
            {_UNDO_AUTOMATION}
            RETURN false;
        END IF;
    END IF;
    IF gl.max_orders_per_minute IS NOT NULL THEN
        UPDATE risk_globalslot AS c SET times = risk_window_push(c.times, p_now_s, 60.0, c.capacity)
        WHERE c.id = (SELECT f.id FROM risk_globalslot AS f
                      WHERE f.kind = 'order_rate' AND risk_window_count(f.times, p_now_s, 60.0) < f.capacity
                      ORDER BY f.n LIMIT 1 FOR UPDATE OF f SKIP LOCKED)
        RETURNING c.id INTO r_id;
        IF r_id IS NULL THEN
            {_UNDO_AUTOMATION}
            UPDATE risk_globalslot SET used = used - 1 WHERE id = o_id;
            RETURN false;
        END IF;
    END IF;
    IF gl.max_daily_loss IS NOT NULL OR gl.max_drawdown IS NOT NULL OR gl.max_consecutive_losses IS NOT NULL
       OR gl.max_slippage_breaches_per_day IS NOT NULL THEN
        PERFORM set_config('risk.global_read_unlocked', 'on', true);
    END IF;
    IF p_async_commit THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    RETURN true;
END
$$;

SELECT risk_global_slots_rebuild({GLOBAL_SLOT_STRIPES}, extract(epoch FROM now())::double precision);
"""  # noqa: S608 - built from constants of this file and 0008 only

DROP = """
DROP FUNCTION IF EXISTS risk_global_slot_release();
DROP FUNCTION IF EXISTS risk_global_slots_rebuild(integer, double precision);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("risk", "0009_pretrade_regime_first"),
    ]

    operations = [
        migrations.CreateModel(
            name="GlobalSlot",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(choices=[("open_orders", "Open orders"), ("order_rate", "Orders per minute")],
                                          max_length=16)),
                ("n", models.PositiveIntegerField()),
                ("capacity", models.PositiveIntegerField()),
                ("used", models.IntegerField(default=0)),
                ("times", django.contrib.postgres.fields.ArrayField(
                    base_field=models.FloatField(), blank=True, default=list,
                    help_text="Epoch seconds of orders in the last minute.", size=None)),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("kind", "n"), name="risk_global_slot_one_per_kind_n")],
            },
        ),
        migrations.RunSQL(sql=FUNCTION, reverse_sql=[DROP, _previous().FUNCTION]),
    ]
