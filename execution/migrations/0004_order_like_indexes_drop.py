from django.db import migrations


class Migration(migrations.Migration):
    """Drop the ``varchar_pattern_ops`` twins of ``Order.status`` and ``Order.client_order_id``.

    PostgreSQL's schema editor in Django gives every unique or indexed
    ``CharField`` a second index with ``varchar_pattern_ops`` for ``LIKE``
    queries, and no field option turns it off. No query reads either column
    with ``LIKE``: orders are found by status with ``=`` or ``IN`` (the plain
    status index) and by client order id with ``=`` (the unique index); the
    admin's ``=client_order_id`` search is ``iexact``, ``UPPER(...) = UPPER(...)``,
    which no pattern index serves either. Each is a write per order. Django
    drops them with ``IF EXISTS`` should it ever remove them itself, so the
    model state may keep believing in them.
    """

    dependencies = [
        ("execution", "0003_fill_position_after"),
    ]

    operations = [
        migrations.RunSQL(
            "DROP INDEX IF EXISTS execution_order_status_4b6db22a_like",
            "CREATE INDEX IF NOT EXISTS execution_order_status_4b6db22a_like ON execution_order (status varchar_pattern_ops)",
        ),
        migrations.RunSQL(
            "DROP INDEX IF EXISTS execution_order_client_order_id_87c9b282_like",
            "CREATE INDEX IF NOT EXISTS execution_order_client_order_id_87c9b282_like "
            "ON execution_order (client_order_id varchar_pattern_ops)",
        ),
    ]
