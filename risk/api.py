"""Risk API: the kill switch, breakers, alerts and limits (DRF, one view per operation).

Who may do what:
- engage the kill switch: any trader or risk officer (stopping is always allowed
  to the people who watch the market);
- release the kill switch, reset a breaker, change a limit: a risk officer
  with a fresh TOTP code in the request, and a reason.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from automations.models import Automation
from risk import services
from risk.models import Alert, BreakerTrip, KillSwitch
from risk.selectors import LIMIT_SETTING_FIELDS, alerts_recent, breaker_trips_open, kill_switch_state, user_is_risk_officer
from trading.api import DomainError
from trading.permissions import ADMIN, RISK_OFFICER, TRADER, VerifiedRole, roles_required

AnyRole = VerifiedRole
RiskOfficerOnly = roles_required(RISK_OFFICER)
# Any trader, risk officer or admin may stop trading; only a risk officer may restart it.
CanEngage = roles_required(TRADER, RISK_OFFICER, ADMIN)


class KillSwitchOutput(serializers.ModelSerializer):
    class Meta:
        model = KillSwitch
        fields = ["engaged", "reason", "changed_at", "changed_by"]


class KillSwitchView(APIView):
    permission_classes = [AnyRole]

    def get(self, request: Request) -> Response:
        return Response(KillSwitchOutput(kill_switch_state()).data)


class KillSwitchEngageView(APIView):
    permission_classes = [CanEngage]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        switch = services.kill_switch_engage_by_user(user=request.user, reason=data.validated_data["reason"])
        return Response(KillSwitchOutput(switch).data, status=status.HTTP_200_OK)


class KillSwitchReleaseView(APIView):
    permission_classes = [RiskOfficerOnly]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        otp_token = serializers.CharField(max_length=16)

    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        switch = services.kill_switch_release_by_user(
            user=request.user, reason=data.validated_data["reason"], otp_token=data.validated_data["otp_token"]
        )
        return Response(KillSwitchOutput(switch).data)


class BreakerTripOutput(serializers.ModelSerializer):
    automation = serializers.CharField(source="automation.name", default="global")

    class Meta:
        model = BreakerTrip
        fields = ["id", "automation", "limit", "value", "threshold", "message", "tripped_at", "reset_at", "reset_by",
                  "reset_reason"]


class BreakerTripListView(APIView):
    permission_classes = [AnyRole]

    def get(self, request: Request) -> Response:
        return Response(BreakerTripOutput(breaker_trips_open(), many=True).data)


class BreakerResetView(APIView):
    permission_classes = [RiskOfficerOnly]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        otp_token = serializers.CharField(max_length=16)

    def post(self, request: Request, trip_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        trip = get_object_or_404(BreakerTrip, pk=trip_id)
        trip = services.breaker_reset(
            trip=trip, user=request.user, otp_token=data.validated_data["otp_token"], reason=data.validated_data["reason"]
        )
        return Response(BreakerTripOutput(trip).data)


class AlertOutput(serializers.ModelSerializer):
    class Meta:
        model = Alert
        fields = ["id", "kind", "severity", "subject", "message", "created_at", "delivery_state", "attempts",
                  "delivered_at", "last_error"]


class AlertListView(APIView):
    permission_classes = [AnyRole]

    def get(self, request: Request) -> Response:
        return Response(AlertOutput(alerts_recent(limit=100), many=True).data)


class RiskLimitSetView(APIView):
    """POST ``{"automation": id|null, "reason": "...", "otp_token": "...", "limits": {"max_open_orders": 5, ...}}``."""

    permission_classes = [RiskOfficerOnly]

    class InputSerializer(serializers.Serializer):
        automation = serializers.IntegerField(allow_null=True, required=False)
        reason = serializers.CharField(max_length=2000)
        otp_token = serializers.CharField(max_length=16)
        limits = serializers.DictField(child=serializers.CharField(allow_null=True))

    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        if not user_is_risk_officer(request.user):
            raise DomainError("only a risk officer may change risk limits", code="forbidden", status_code=403)
        if not services.otp_verify(user=request.user, token=v["otp_token"]):
            raise DomainError("the one-time password is not valid (or was already used)", code="otp_invalid",
                              status_code=403)
        automation = get_object_or_404(Automation, pk=v["automation"]) if v.get("automation") else None
        values: dict[str, Any] = {}
        for name, raw in v["limits"].items():
            if name not in LIMIT_SETTING_FIELDS:
                raise DomainError(f"unknown limit {name}", code="invalid", status_code=400)
            values[name] = _limit_value(name, raw)
        row = services.risk_limit_set(automation=automation, actor=request.user, reason=v["reason"], **values)
        return Response({"automation": automation.pk if automation else None,
                         **{name: str(getattr(row, name)) if getattr(row, name) is not None else None
                            for name in LIMIT_SETTING_FIELDS}})


def _limit_value(name: str, raw: str | None) -> Any:
    from decimal import Decimal, InvalidOperation

    from risk.selectors import LIMIT_FIELDS

    if raw is None or raw == "":
        return None
    integer = name in LIMIT_FIELDS and name.startswith(("max_signals", "max_open", "max_orders", "max_consecutive", "max_slippage"))
    try:
        return int(raw) if integer else Decimal(raw)
    except (ValueError, InvalidOperation) as exc:
        raise DomainError(f"{name}: {raw!r} is not a number", code="invalid", status_code=400) from exc
