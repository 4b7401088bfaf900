"""``risk_pretrade_reserve`` reads which case it is in before it plans any row work.

Same decisions as 0008 (held by ``tests/risk/test_pretrade_fast_path.py``
and ``tests/risk/test_global_row.py``). In 0008, with a global stateful
limit set, every check first ran the one-row UPDATE, which could match
nothing, and only then the two-row path: the executor still set up the whole
UPDATE plan. Now one small read of the global limit row (after the counting
barrier, so it sees the limits as they are) picks the path, and the one-row
UPDATE no longer carries that test.
"""

from __future__ import annotations

import importlib

from django.db import migrations


def _previous():  # type: ignore[no-untyped-def]
    return importlib.import_module("risk.migrations.0008_pretrade_global_row_unlocked")


_P = _previous()
STATEFUL = """gl.max_open_orders IS NOT NULL OR gl.max_orders_per_minute IS NOT NULL
                   OR gl.max_daily_loss IS NOT NULL OR gl.max_drawdown IS NOT NULL
                   OR gl.max_consecutive_losses IS NOT NULL OR gl.max_slippage_breaches_per_day IS NOT NULL"""

FUNCTION = f"""
CREATE OR REPLACE FUNCTION risk_pretrade_reserve(
    p_automation bigint, p_day date, p_now_s double precision, p_qty numeric, p_limit numeric, p_mid numeric,
    p_async_commit boolean
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
    ids bigint[] := '{{}}';
    keeps integer[] := '{{}}';
    reserved boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock_shared({_P.BARRIER_KEY});
    IF NOT EXISTS (SELECT 1 FROM risk_risklimit AS gl WHERE gl.automation_id IS NULL AND ({STATEFUL})) THEN
        UPDATE risk_riskstate AS s SET {_P.DAY_ROLL},
            open_orders = s.open_orders + 1,
            order_times = CASE WHEN coalesce(l.max_orders_per_minute, 0) <= 0 THEN '{{}}'::double precision[]
                               ELSE risk_window_push(s.order_times, p_now_s, 60.0, l.max_orders_per_minute) END
        FROM (SELECT 1) AS one LEFT JOIN risk_risklimit AS l ON l.automation_id = p_automation
        WHERE s.automation_id = p_automation AND NOT s.tripped AND {_P._passes("s", "l")}
          AND NOT EXISTS (SELECT 1 FROM risk_risklimit AS gl WHERE gl.automation_id IS NULL
                          AND NOT {_P._size_passes("gl")})
          AND EXISTS (SELECT 1 FROM risk_riskstate AS g WHERE g.automation_id IS NULL AND NOT g.tripped)
          AND NOT EXISTS (SELECT 1 FROM risk_killswitch AS k WHERE k.id = 1 AND k.engaged)
          AND EXISTS (SELECT 1 FROM automations_automation AS a WHERE a.id = p_automation AND a.status = 'active');
        reserved := FOUND;
    END IF;
    IF NOT reserved THEN
        FOR r IN
            SELECT s.id, s.tripped, coalesce(l.max_orders_per_minute, 0) AS keep,
                coalesce((SELECT k.engaged FROM risk_killswitch AS k WHERE k.id = 1), false) AS kill_switch_on,
                (SELECT a.status FROM automations_automation AS a WHERE a.id = p_automation) AS status,
                {_P._passes("s", "l")} AS passes
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
        UPDATE risk_riskstate AS s SET {_P.DAY_ROLL},
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
"""  # noqa: S608 - built from constants of this file and 0008 only


class Migration(migrations.Migration):
    dependencies = [("risk", "0008_pretrade_global_row_unlocked")]

    operations = [
        migrations.RunSQL(sql=FUNCTION, reverse_sql=_P.FUNCTION),
    ]
