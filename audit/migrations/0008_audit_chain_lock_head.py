from django.db import migrations

# The chain lock's key is audit.services._CHAIN_LOCK_KEY (0x46505F4155444954, "FP_AUDIT"), written out:
# a migration must not change when the module does. tests/audit/test_chain_lock_head.py checks both agree.
CREATE_SQL = """
CREATE OR REPLACE FUNCTION audit_chain_lock_head() RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head text;
BEGIN
    PERFORM pg_advisory_xact_lock(5066654314999859540);
    -- A statement of its own in a VOLATILE function takes a fresh snapshot (READ COMMITTED), after
    -- the lock is held: it sees the event the lock's previous holder committed, whatever snapshot
    -- the calling statement took when it started.
    SELECT hash INTO head FROM audit_auditevent ORDER BY id DESC LIMIT 1;
    RETURN coalesce(head, '0000000000000000000000000000000000000000000000000000000000000000');
END
$$
"""


class Migration(migrations.Migration):
    """``audit_chain_lock_head()``: take the audit chain lock, then read the chain's head.

    A caller selects it inside a statement it sends anyway (the detect
    worker's signal statement, the execute worker's signal move), so the lock
    and the head cost no round trip of their own: ``audit.services``'s
    ``AUDIT_CHAIN_LOCK_HEAD`` and ``audit_events_record(head=...)``.
    """

    dependencies = [
        ("audit", "0007_auditevent_hash_like_drop"),
    ]

    operations = [
        migrations.RunSQL(CREATE_SQL, "DROP FUNCTION IF EXISTS audit_chain_lock_head()"),
    ]
