from django.db import migrations


class Migration(migrations.Migration):
    """Drop the ``varchar_pattern_ops`` twin of the unique ``hash`` index.

    PostgreSQL's schema editor in Django gives every unique or indexed
    ``CharField`` a second index with ``varchar_pattern_ops`` for ``LIKE``
    queries, and no field option turns it off. Nobody searches hashes by
    prefix (the chain is read by id, a hash looked up by equality uses the
    unique index), so it is only a write per appended event. Django drops it
    with ``IF EXISTS`` should the field's uniqueness ever be removed, so the
    model state may keep believing in it.
    """

    dependencies = [
        ("audit", "0006_auditevent_actor_kind_single_indexes_drop"),
    ]

    operations = [
        migrations.RunSQL(
            "DROP INDEX IF EXISTS audit_auditevent_hash_d0c402da_like",
            "CREATE INDEX IF NOT EXISTS audit_auditevent_hash_d0c402da_like ON audit_auditevent (hash varchar_pattern_ops)",
        ),
    ]
