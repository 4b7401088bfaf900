"""The trader page, the OTP login, and the vendored plotly bundle (the machine is offline: no CDN)."""

from __future__ import annotations

from pathlib import Path

import plotly
from django.contrib.auth import views as auth_views
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET
from django_otp.decorators import otp_required
from django_otp.forms import OTPAuthenticationForm
from django_otp.plugins.otp_totp.models import TOTPDevice

from automations import selectors
from automations.api import CONFIGURE_ROLES, OPERATE_ROLES
from trading.permissions import user_roles

PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class OTPLoginForm(OTPAuthenticationForm):
    """Username, password and the current TOTP code, all on one form."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["otp_token"].required = True
        self.fields["otp_token"].widget.attrs.update({"autocomplete": "one-time-code", "inputmode": "numeric"})

    def _chosen_device(self, user):
        """The device the form names, else the user's authenticator app (its first confirmed TOTP device).

        django-otp no longer tries every device in turn (a miss would throttle
        unrelated devices), so a one-field login must say which device it means.
        """
        device = super()._chosen_device(user)
        if device is None:
            device = TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()
        return device


class OTPLoginView(auth_views.LoginView):
    template_name = "trader/login.html"
    authentication_form = OTPLoginForm
    redirect_authenticated_user = False


@otp_required(login_url="/accounts/login/")
def trader_page(request: HttpRequest) -> HttpResponse:
    roles = user_roles(request.user)
    automations = [
        {
            "id": a.id,
            "name": a.name,
            "symbol": a.symbol,
            "strategy": a.strategy,
            "status": a.status,
            "mode": a.mode,
            "approved_trade_count": a.approved_trade_count,
            "automatic_trade_count": a.automatic_trade_count,
            "approval_threshold": a.approval_threshold,
            "pending_count": a.pending_count,
        }
        for a in selectors.automations_with_counts()
    ]
    bootstrap = {
        "last_seq": selectors.push_sequence_current(),
        "signals": [selectors.signal_payload(s) for s in selectors.signals_filtered()[:100]],
        "automations": automations,
        "counters": selectors.trade_counters(),
        "can_operate": bool(roles & OPERATE_ROLES),
        "can_configure": bool(roles & CONFIGURE_ROLES),
        "ws_path": "/ws/signals/",
    }
    return render(request, "trader/index.html", {"bootstrap": bootstrap, "roles": sorted(roles)})


@require_GET
@cache_control(max_age=86400, public=True)
def plotly_js(request: HttpRequest) -> FileResponse:
    return FileResponse(PLOTLY_JS.open("rb"), content_type="application/javascript")
