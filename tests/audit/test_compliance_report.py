from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.history import acting_as
from audit.models import AuditEvent


@pytest.mark.django_db
def test_the_report_maps_controls_and_shows_limit_changes_and_chain_status(risk_limit, make_user, tmp_path):
    with acting_as(make_user.root, "halve order size for the FOMC week"):
        risk_limit.max_order_qty = Decimal("1")
        risk_limit.save()
    today = timezone.now().date()
    out = tmp_path / "report.html"
    call_command("compliance_report", "--from", str(today - dt.timedelta(days=1)), "--to", str(today), "--output", str(out))
    html = out.read_text()
    assert "halve order size for the FOMC week" in html
    assert "Art. 12: kill functionality" in html and "Unaudited config" in html and "No regime filtering" in html
    assert "VERIFIED" in html and "BROKEN" not in html
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.EXPORT, data__report="compliance").count() == 1
