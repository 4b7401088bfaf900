import uuid

from django.db import migrations, models


def fill_trip_keys(apps, schema_editor):
    BreakerTrip = apps.get_model("risk", "BreakerTrip")
    for trip in BreakerTrip.objects.filter(trip_key__isnull=True).only("pk"):
        trip.trip_key = uuid.uuid4()
        trip.save(update_fields=["trip_key"])


class Migration(migrations.Migration):

    dependencies = [
        ("automations", "0001_initial"),
        ("risk", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="breakertrip",
            name="trip_key",
            field=models.UUIDField(null=True, editable=False),
        ),
        migrations.RunPython(fill_trip_keys, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="breakertrip",
            name="trip_key",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
        migrations.AddIndex(
            model_name="breakertrip",
            index=models.Index(fields=["automation", "reset_at"], name="breaker_trip_open_idx"),
        ),
        migrations.AddField(
            model_name="alert",
            name="delivered_channels",
            field=models.JSONField(
                blank=True, default=list,
                help_text="Channels (webhook, email) already delivered, so a retry never repeats them.",
            ),
        ),
    ]
