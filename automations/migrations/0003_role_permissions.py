"""Give the platform roles their model permissions on automations.

The history guard (``audit.history``) checks ``automations.<action>_automation``
for every versioned change, so the roles need them:

- viewer, compliance: view only;
- trader: view, and change (pausing and resuming is a change of status; the
  API limits what a trader may change to pause/resume);
- risk_officer, admin: add, change, view.

Nobody gets delete: automations are referenced by signals and history.
"""

from django.db import migrations

ROLE_PERMS = {
    "viewer": ["view"],
    "compliance": ["view"],
    "trader": ["view", "change"],
    "risk_officer": ["add", "change", "view"],
    "admin": ["add", "change", "view"],
}
MODELS = ["automation", "signal", "l2snapshot", "signaltransition"]


def grant(apps, schema_editor):
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    create_permissions(global_apps.get_app_config("automations"), verbosity=0, apps=apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, actions in ROLE_PERMS.items():
        group, _ = Group.objects.get_or_create(name=role)
        for model in MODELS:
            for action in actions:
                if model != "automation" and action != "view":
                    continue
                perm = Permission.objects.filter(content_type__app_label="automations", codename=f"{action}_{model}").first()
                if perm is not None:
                    group.permissions.add(perm)


class Migration(migrations.Migration):
    dependencies = [
        ("automations", "0002_signal_context"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
