"""REST API for automations and signals (one view per operation).

Roles (Django groups) and what they may do here:

| operation                          | viewer | compliance | trader | risk_officer | admin |
| ---------------------------------- | ------ | ---------- | ------ | ------------ | ----- |
| list / read automations and signals | yes   | yes        | yes    | yes          | yes   |
| pause / resume an automation        |       |            | yes    | yes          | yes   |
| create / update an automation       |       |            |        | yes          | yes   |

A trader runs automations but does not configure them: strategy parameters,
gating thresholds and allowed regimes are risk settings, so changing them is
for the risk officer (and admin). Every endpoint also needs a session that
passed OTP. Mode switches (paper/live) are execution's own OTP-gated
endpoint; new automations are always created in paper mode. Refusals answer
4xx JSON ``{"detail": ..., "code": ...}``; a refused permission is also
written to the audit log.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from automations import selectors, services
from automations.models import Automation, Signal
from automations.snapshots import SnapshotIntegrityError, snapshot_load
from trading.permissions import ALL_ROLES, VerifiedRole

READ_ROLES = ALL_ROLES
OPERATE_ROLES = frozenset({"trader", "risk_officer", "admin"})
CONFIGURE_ROLES = frozenset({"risk_officer", "admin"})

_ERROR = inline_serializer("AutomationsErrorOut", {"detail": serializers.CharField(), "code": serializers.CharField()})


class CanRead(VerifiedRole):
    roles = READ_ROLES


class CanOperate(VerifiedRole):
    roles = OPERATE_ROLES


class CanConfigure(VerifiedRole):
    roles = CONFIGURE_ROLES


def _automation_or_404(automation_id: int) -> Automation:
    automation = Automation.objects.filter(pk=automation_id).first()
    if automation is None:
        raise NotFound(f"automation {automation_id} does not exist")
    return automation


class AutomationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    symbol = serializers.CharField()
    strategy = serializers.CharField()
    parameters = serializers.DictField()
    status = serializers.CharField()
    mode = serializers.CharField()
    approval_threshold = serializers.IntegerField()
    require_approval = serializers.BooleanField()
    approved_trade_count = serializers.IntegerField()
    automatic_trade_count = serializers.IntegerField()
    gated_trades_remaining = serializers.IntegerField()
    allowed_regimes = serializers.DictField()
    signal_expiry_seconds = serializers.IntegerField()
    four_eyes = serializers.BooleanField()
    snapshot_levels = serializers.IntegerField()
    last_changed_by = serializers.CharField(source="last_changed_by.username", default=None, allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class _ReasonInput(serializers.Serializer):
    reason = serializers.CharField(
        max_length=2000,
        trim_whitespace=True,
        error_messages={"blank": "a reason is required", "required": "a reason is required"},
    )


class _ConfigFields(serializers.Serializer):
    strategy = serializers.CharField(max_length=64)
    parameters = serializers.DictField()
    approval_threshold = serializers.IntegerField(min_value=0, max_value=1_000_000)
    require_approval = serializers.BooleanField()
    allowed_regimes = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    signal_expiry_seconds = serializers.IntegerField(min_value=1, max_value=86_400)
    four_eyes = serializers.BooleanField()
    snapshot_levels = serializers.IntegerField(min_value=1, max_value=services.MAX_SNAPSHOT_LEVELS)


class AutomationListApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(operation_id="automations_list", responses={200: AutomationOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        qs = Automation.objects.select_related("last_changed_by").order_by("name")
        return Response(AutomationOutputSerializer(qs, many=True).data)


class AutomationDetailApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(operation_id="automations_read", responses={200: AutomationOutputSerializer, 404: _ERROR})
    def get(self, request: Request, automation_id: int) -> Response:
        return Response(AutomationOutputSerializer(_automation_or_404(automation_id)).data)


class AutomationCreateApi(APIView):
    permission_classes = [CanConfigure]

    class InputSerializer(_ReasonInput, _ConfigFields):
        name = serializers.CharField(max_length=100)
        symbol = serializers.CharField(max_length=32)
        parameters = serializers.DictField(required=False, default=dict)
        approval_threshold = serializers.IntegerField(min_value=0, max_value=1_000_000, default=10)
        require_approval = serializers.BooleanField(default=False)
        allowed_regimes = serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()), required=False, default=dict
        )
        signal_expiry_seconds = serializers.IntegerField(min_value=1, max_value=86_400, default=120)
        four_eyes = serializers.BooleanField(default=False)
        snapshot_levels = serializers.IntegerField(min_value=1, max_value=services.MAX_SNAPSHOT_LEVELS, default=20)

    @extend_schema(
        operation_id="automations_create",
        request=InputSerializer,
        responses={201: AutomationOutputSerializer, 400: _ERROR, 403: _ERROR},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        automation = services.automation_create(actor=request.user, **values)
        return Response(AutomationOutputSerializer(automation).data, status=status.HTTP_201_CREATED)


class AutomationUpdateApi(APIView):
    permission_classes = [CanConfigure]

    class InputSerializer(_ReasonInput, _ConfigFields):
        name = serializers.CharField(max_length=100)

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for name, field in self.fields.items():
                if name != "reason":
                    field.required = False

    @extend_schema(
        operation_id="automations_update",
        request=InputSerializer,
        responses={200: AutomationOutputSerializer, 400: _ERROR, 403: _ERROR, 404: _ERROR},
    )
    def post(self, request: Request, automation_id: int) -> Response:
        automation = _automation_or_404(automation_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        reason = changes.pop("reason")
        updated = services.automation_update(automation=automation, actor=request.user, reason=reason, changes=changes)
        return Response(AutomationOutputSerializer(updated).data)


class AutomationPauseApi(APIView):
    permission_classes = [CanOperate]
    InputSerializer = _ReasonInput

    @extend_schema(
        operation_id="automations_pause",
        request=_ReasonInput,
        responses={200: AutomationOutputSerializer, 400: _ERROR, 403: _ERROR, 404: _ERROR, 409: _ERROR},
    )
    def post(self, request: Request, automation_id: int) -> Response:
        automation = _automation_or_404(automation_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        updated = services.automation_pause(automation=automation, actor=request.user, reason=data.validated_data["reason"])
        return Response(AutomationOutputSerializer(updated).data)


class AutomationResumeApi(APIView):
    permission_classes = [CanOperate]
    InputSerializer = _ReasonInput

    @extend_schema(
        operation_id="automations_resume",
        request=_ReasonInput,
        responses={200: AutomationOutputSerializer, 400: _ERROR, 403: _ERROR, 404: _ERROR, 409: _ERROR},
    )
    def post(self, request: Request, automation_id: int) -> Response:
        automation = _automation_or_404(automation_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        updated = services.automation_resume(automation=automation, actor=request.user, reason=data.validated_data["reason"])
        return Response(AutomationOutputSerializer(updated).data)


class SignalOutputSerializer(serializers.Serializer):
    """``automations.selectors.signal_payload``: the same shape as the websocket push."""

    id = serializers.IntegerField()
    automation_id = serializers.IntegerField()
    automation_name = serializers.CharField()
    symbol = serializers.CharField()
    side = serializers.CharField()
    quantity = serializers.CharField()
    limit_price = serializers.CharField()
    reason = serializers.CharField()
    status = serializers.CharField()
    status_reason = serializers.CharField()
    needs_approval = serializers.BooleanField()
    bid = serializers.CharField(allow_null=True)
    ask = serializers.CharField(allow_null=True)
    mid = serializers.CharField(allow_null=True)
    spread_bps = serializers.FloatField(allow_null=True)
    regime = serializers.DictField()
    features = serializers.DictField()
    market_ts = serializers.CharField(allow_null=True)
    created_at = serializers.CharField()
    expires_at = serializers.CharField(allow_null=True)
    decided_at = serializers.CharField(allow_null=True)
    snapshot_id = serializers.IntegerField(allow_null=True)
    sequence = serializers.IntegerField()


class SignalListApi(APIView):
    """Signals, newest first; with ``since_seq`` every signal changed after that push number, oldest change first.

    The response carries ``last_seq``, the highest push number so far: a
    client that saw a gap in the websocket sequence asks for
    ``?since_seq=<last it applied>`` and continues from ``last_seq``.
    """

    permission_classes = [CanRead]

    class FilterSerializer(serializers.Serializer):
        status = serializers.CharField(required=False, max_length=200)
        automation = serializers.IntegerField(required=False, min_value=1)
        symbol = serializers.CharField(required=False, max_length=32)
        since = serializers.DateTimeField(required=False)
        since_seq = serializers.IntegerField(required=False, min_value=0)

        def validate_status(self, value: str) -> str:
            bad = [s for s in value.split(",") if s not in Signal.Status.values]
            if bad:
                raise serializers.ValidationError(f"unknown status {bad}; allowed: {Signal.Status.values}")
            return value

    @extend_schema(
        operation_id="signals_list",
        parameters=[
            OpenApiParameter("status", str, description="Comma-separated statuses."),
            OpenApiParameter("automation", int),
            OpenApiParameter("symbol", str),
            OpenApiParameter("since", str, description="ISO-8601 creation time lower bound."),
            OpenApiParameter("since_seq", int, description="Re-sync: signals changed after this push sequence."),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={
            200: inline_serializer(
                "SignalPage",
                {
                    "count": serializers.IntegerField(),
                    "next": serializers.CharField(allow_null=True),
                    "previous": serializers.CharField(allow_null=True),
                    "last_seq": serializers.IntegerField(),
                    "results": SignalOutputSerializer(many=True),
                },
            ),
            400: _ERROR,
        },
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        f = filters.validated_data
        last_seq = selectors.push_sequence_current()
        qs = selectors.signals_filtered(
            status=f.get("status"),
            automation_id=f.get("automation"),
            symbol=f.get("symbol"),
            since=f.get("since"),
            since_seq=f.get("since_seq"),
        )
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        response = paginator.get_paginated_response([selectors.signal_payload(s) for s in page])
        response.data["last_seq"] = last_seq
        return response


class SignalDetailApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="signals_read",
        responses={
            200: inline_serializer(
                "SignalDetail",
                {
                    "signal": SignalOutputSerializer(),
                    "snapshot": serializers.DictField(allow_null=True),
                    "transitions": serializers.ListField(child=serializers.DictField()),
                },
            ),
            404: _ERROR,
        },
    )
    def get(self, request: Request, signal_id: int) -> Response:
        signal = Signal.objects.select_related("automation", "snapshot").filter(pk=signal_id).first()
        if signal is None:
            raise NotFound(f"signal {signal_id} does not exist")
        snapshot: dict[str, Any] | None = None
        if signal.snapshot is not None:
            stored = signal.snapshot
            snapshot = {
                "id": stored.pk,
                "ts": stored.ts.isoformat(),
                "levels": stored.levels,
                "sha256": stored.sha256,
                "storage": stored.storage,
                "archive_ref": stored.archive_ref,
            }
            try:
                book = snapshot_load(stored)
                snapshot["bids"] = [[str(p), str(s)] for p, s in book.bids]
                snapshot["asks"] = [[str(p), str(s)] for p, s in book.asks]
                snapshot["verified"] = True
            except SnapshotIntegrityError as exc:
                # Show the trader the stored facts and the problem, not a 500.
                snapshot.update(bids=[], asks=[], verified=False, error=str(exc))
        transitions = [
            {
                "at": t.at.isoformat(),
                "from": t.from_status,
                "to": t.to_status,
                "actor": t.actor_label,
                "reason": t.reason,
                "sequence": t.sequence,
            }
            for t in signal.transitions.all()
        ]
        return Response({"signal": selectors.signal_payload(signal), "snapshot": snapshot, "transitions": transitions})
