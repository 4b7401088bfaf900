from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_migrate, post_save, pre_delete, pre_save


class AuditConfig(AppConfig):
    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the change guards, the history sealing and the security-event receivers.

        1. Versioned models: a pre_save/pre_delete guard (reason and
           permission) and a post_save that forgets the consumed reason. These
           run after simple-history's receivers, which were connected when the
           models were prepared.
        2. Every simple-history model: each new row is sealed into the chain.
        3. Sign-in, OTP, lockout and group-membership signals.
        4. The admin site becomes the OTP-protected compliance site.
        """
        from axes.signals import user_locked_out
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_in, user_login_failed
        from django_otp.forms import otp_verification_failed
        from simple_history.signals import post_create_historical_record

        from audit import history, security, services

        for label in history.VERSIONED_MODELS:
            try:
                model = self.apps.get_model(label)
            except LookupError:  # pragma: no cover - an app not installed in this configuration
                continue
            uid = f"fp_audit_{label}"
            pre_save.connect(history.versioned_pre_save, sender=model, dispatch_uid=f"{uid}_pre_save")
            post_save.connect(history.versioned_post_save, sender=model, dispatch_uid=f"{uid}_post_save")
            pre_delete.connect(history.versioned_pre_delete, sender=model, dispatch_uid=f"{uid}_pre_delete")
        for history_model in history.history_models():
            post_create_historical_record.connect(history.history_post_create, sender=history_model,
                                                  dispatch_uid=f"fp_audit_seal_{history_model._meta.label_lower}")

        user_logged_in.connect(security.on_user_logged_in, dispatch_uid="fp_audit_sign_in")
        user_login_failed.connect(security.on_user_login_failed, dispatch_uid="fp_audit_sign_in_failed")
        otp_verification_failed.connect(security.on_otp_verification_failed, dispatch_uid="fp_audit_otp_failed")
        user_locked_out.connect(security.on_user_locked_out, dispatch_uid="fp_audit_lockout")
        m2m_changed.connect(services.user_groups_changed, sender=get_user_model().groups.through,
                            dispatch_uid="fp_audit_user_groups")
        post_migrate.connect(_allow_truncate_in_test_database, sender=self, dispatch_uid="fp_audit_test_truncate")

        from audit.admin_site import install_compliance_site

        install_compliance_site()


def _allow_truncate_in_test_database(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """Let Django flush a *test* database: TransactionTestCase empties tables with TRUNCATE.

    Only when the test environment is set up (``setup_test_environment``), so a
    production or development database never gets this setting.
    """
    from django.db import connections
    from django.test.utils import _TestState

    if not hasattr(_TestState, "saved_data"):
        return
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {connection.ops.quote_name(connection.settings_dict['NAME'])} "
                       "SET fp.audit_allow_truncate = 'on'")
        cursor.execute("SET fp.audit_allow_truncate = 'on'")
