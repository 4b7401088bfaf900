"""``risk_global_slot_claim``: the fast path's slot claim (``risk/0010``) as a function of its own, for the locked path.

The locked path (``risk.services._pretrade_check_locked``) first claims a
slot the way the fast path does, without waiting, and locks every slot of a
kind only when that finds none. Locking every slot on each locked check made
concurrent fast-path checks find no free slot, fall back to the locked path
and lock every slot in turn: under load one refusal turned into a cascade.
"""

from __future__ import annotations

from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION risk_global_slot_claim(p_kind text, p_now_s double precision)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    s_id bigint;
BEGIN
    IF p_kind = 'open_orders' THEN
        UPDATE risk_globalslot AS c SET used = c.used + 1
        WHERE c.id = (SELECT f.id FROM risk_globalslot AS f
                      WHERE f.kind = 'open_orders' AND f.n > 0 AND f.used < f.capacity
                        AND NOT EXISTS (SELECT 1 FROM risk_globalslot AS d
                                        WHERE d.kind = 'open_orders' AND d.n = 0 AND d.used > 0)
                      ORDER BY f.n LIMIT 1 FOR UPDATE OF f SKIP LOCKED)
        RETURNING c.id INTO s_id;
    ELSE
        UPDATE risk_globalslot AS c SET times = risk_window_push(c.times, p_now_s, 60.0, c.capacity)
        WHERE c.id = (SELECT f.id FROM risk_globalslot AS f
                      WHERE f.kind = 'order_rate' AND risk_window_count(f.times, p_now_s, 60.0) < f.capacity
                      ORDER BY f.n LIMIT 1 FOR UPDATE OF f SKIP LOCKED)
        RETURNING c.id INTO s_id;
    END IF;
    RETURN s_id;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("risk", "0010_global_slots")]

    operations = [
        migrations.RunSQL(sql=FUNCTION, reverse_sql="DROP FUNCTION IF EXISTS risk_global_slot_claim(text, double precision);"),
    ]
