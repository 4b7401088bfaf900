"""The execution API: approve / reject a signal, switch an automation's mode, read orders.

One view per operation; serializers validate the input, services decide and
write. Refusals come back as 4xx JSON ``{"detail": ..., "code": ...}``
(``trading.api.exception_handler``); success returns the updated object.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from automations.api import SignalOutputSerializer
from automations.models import Automation, Signal
from automations.selectors import signal_payload
from execution import selectors, services
from execution.models import Fill, Order
from trading.permissions import RISK_OFFICER, TRADER, VerifiedRole, roles_required

TraderOnly = roles_required(TRADER)
RiskOfficerOnly = roles_required(RISK_OFFICER)
AnyRole = VerifiedRole

_ERROR = inline_serializer("ErrorOut", {"detail": serializers.CharField(), "code": serializers.CharField()})


def _signal_response(signal_id: int) -> Response:
    signal = Signal.objects.select_related("automation").get(pk=signal_id)
    return Response(signal_payload(signal), status=status.HTTP_200_OK)


class SignalApproveView(APIView):
    permission_classes = [TraderOnly]

    class InputSerializer(serializers.Serializer):
        otp = serializers.RegexField(r"^\s*\d{6,8}\s*$", max_length=16,
                                     error_messages={"invalid": "the one-time password must be 6 to 8 digits"})

    @extend_schema(operation_id="signal_approve", request=InputSerializer,
                   responses={200: SignalOutputSerializer, 400: _ERROR, 403: _ERROR, 404: _ERROR, 409: _ERROR})
    def post(self, request: Request, signal_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        signal = services.signal_approve(signal_id=signal_id, user=request.user,
                                         otp_token=data.validated_data["otp"].strip())
        # The service returns the signal as it committed it, automation included: no second read.
        return Response(signal_payload(signal), status=status.HTTP_200_OK)


class SignalRejectView(APIView):
    permission_classes = [TraderOnly]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000, trim_whitespace=True)

    @extend_schema(operation_id="signal_reject", request=InputSerializer,
                   responses={200: SignalOutputSerializer, 400: _ERROR, 403: _ERROR, 404: _ERROR, 409: _ERROR})
    def post(self, request: Request, signal_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.signal_reject(signal_id=signal_id, user=request.user, reason=data.validated_data["reason"])
        return _signal_response(signal_id)


class AutomationModeView(APIView):
    permission_classes = [RiskOfficerOnly]

    class InputSerializer(serializers.Serializer):
        mode = serializers.ChoiceField(choices=Automation.Mode.choices)
        otp = serializers.RegexField(r"^\s*\d{6,8}\s*$", max_length=16)
        reason = serializers.CharField(max_length=2000, trim_whitespace=True)

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        name = serializers.CharField()
        mode = serializers.CharField()
        status = serializers.CharField()

    @extend_schema(operation_id="automation_mode_set", request=InputSerializer,
                   responses={200: OutputSerializer, 400: _ERROR, 403: _ERROR, 404: _ERROR, 409: _ERROR})
    def post(self, request: Request, automation_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        automation = services.automation_mode_set(
            automation_id=automation_id, user=request.user, mode=data.validated_data["mode"],
            otp_token=data.validated_data["otp"].strip(), reason=data.validated_data["reason"],
        )
        return Response(self.OutputSerializer(automation).data)


class FillOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Fill
        fields = ["id", "price", "quantity", "fee", "filled_at", "broker_fill_id", "modelled_slippage_bps",
                  "realized_slippage_bps", "realized_pnl"]


class OrderOutputSerializer(serializers.ModelSerializer):
    automation_name = serializers.CharField(source="automation.name")
    signal_id = serializers.IntegerField()

    class Meta:
        model = Order
        fields = ["id", "signal_id", "automation_id", "automation_name", "client_order_id", "broker", "broker_order_id",
                  "symbol", "side", "quantity", "limit_price", "status", "status_reason", "filled_qty",
                  "avg_fill_price", "arrival_mid", "modelled_slippage_bps", "gated", "created_at", "submitted_at",
                  "closed_at"]


class OrderDetailOutputSerializer(OrderOutputSerializer):
    fills = FillOutputSerializer(many=True)

    class Meta(OrderOutputSerializer.Meta):
        fields = [*OrderOutputSerializer.Meta.fields, "fills"]


class OrderListView(APIView):
    permission_classes = [AnyRole]

    class FilterSerializer(serializers.Serializer):
        status = serializers.CharField(required=False)
        automation = serializers.IntegerField(required=False)
        symbol = serializers.CharField(required=False)
        signal = serializers.IntegerField(required=False)
        since = serializers.DateTimeField(required=False)

    @extend_schema(
        operation_id="orders_list",
        parameters=[OpenApiParameter("status", str, description="comma-separated statuses"),
                    OpenApiParameter("automation", int), OpenApiParameter("symbol", str),
                    OpenApiParameter("signal", int), OpenApiParameter("since", str, description="ISO 8601"),
                    OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
        responses={200: OrderOutputSerializer(many=True), 400: _ERROR},
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        f: dict[str, Any] = filters.validated_data
        qs = selectors.orders_filtered(status=f.get("status"), automation_id=f.get("automation"),
                                       symbol=f.get("symbol"), signal_id=f.get("signal"), since=f.get("since"))
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(OrderOutputSerializer(page, many=True).data)


class OrderDetailView(APIView):
    permission_classes = [AnyRole]

    @extend_schema(operation_id="order_detail", responses={200: OrderDetailOutputSerializer, 404: _ERROR})
    def get(self, request: Request, order_id: int) -> Response:
        order = selectors.order_with_fills(order_id)
        if order is None:
            return Response({"detail": f"order {order_id} does not exist", "code": "not_found"},
                            status=status.HTTP_404_NOT_FOUND)
        return Response(OrderDetailOutputSerializer(order).data)
