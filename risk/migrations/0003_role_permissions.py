"""Give the platform roles their model permissions on risk data.

The history guard (``audit.history``) checks ``risk.<action>_<model>`` for
every versioned change (risk limits, the kill switch), so the roles need them:

- viewer, compliance: view only;
- trader: view, and change the kill switch (anyone who trades may stop
  trading; the service lets only a risk officer with a fresh TOTP release it);
- risk_officer, admin: view, add/change limits, change the kill switch and
  breaker trips (reset).

Nobody gets delete: limits, trips and the switch are evidence.
"""

from django.db import migrations

MODELS = ["risklimit", "riskstate", "breakertrip", "killswitch", "alert"]
ROLE_PERMS = {
    "viewer": [f"view_{m}" for m in MODELS],
    "compliance": [f"view_{m}" for m in MODELS],
    "trader": [*(f"view_{m}" for m in MODELS), "change_killswitch"],
    "risk_officer": [*(f"view_{m}" for m in MODELS), "add_risklimit", "change_risklimit", "add_killswitch",
                     "change_killswitch", "change_breakertrip"],
    "admin": [*(f"view_{m}" for m in MODELS), "add_risklimit", "change_risklimit", "add_killswitch",
              "change_killswitch", "change_breakertrip"],
}


def grant(apps, schema_editor):
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    create_permissions(global_apps.get_app_config("risk"), verbosity=0, apps=apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLE_PERMS.items():
        group, _ = Group.objects.get_or_create(name=role)
        for perm in Permission.objects.filter(content_type__app_label="risk", codename__in=codenames):
            group.permissions.add(perm)


class Migration(migrations.Migration):
    dependencies = [
        ("risk", "0002_breaker_trip_key_alert_channels"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
