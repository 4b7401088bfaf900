"""Model instances to and from raw SQL rows, for the execute worker's hot path.

The ORM compiles every query anew (about half a millisecond of CPU each on
the order path, most of the task's cost), and it cannot send two statements
in one round trip. The order path therefore writes its few statements by
hand and still works with ordinary model instances: ``RowLoader`` builds an
instance from the columns it selected (through the fields' own database
converters, e.g. a JSONField's parsing, exactly as a queryset would), and
``insert_sql`` / ``insert_params`` write one the way ``save(force_insert=True)``
would (each field's ``get_db_prep_save``). The SQL is built once per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any, Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import DecimalField, Model

M = TypeVar("M", bound=Model)


class RowLoader(Generic[M]):
    """``model``'s concrete columns for a SELECT under table alias ``alias``, and instances from such rows."""

    def __init__(self, model: type[M], alias: str) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        self.attnames = [f.attname for f in fields]
        self.width = len(fields)
        self.columns = ", ".join(f'{alias}."{f.column}"' for f in fields)
        self._fields = fields
        self._converters: list[tuple[int, list[Any], Any]] | None = None

    def _converters_for_connection(self) -> list[tuple[int, list[Any], Any]]:
        if self._converters is None:
            table = self.model._meta.db_table
            converters = []
            for i, field in enumerate(self._fields):
                col = field.get_col(table)
                found = col.get_db_converters(connection)
                if found:
                    converters.append((i, found, col))
            self._converters = converters
        return self._converters

    def load(self, row: Sequence[Any], start: int = 0) -> M:
        """The instance held in ``row[start:start + width]`` (as if read by a queryset)."""
        values = list(row[start:start + self.width])
        for i, found, col in self._converters_for_connection():
            for convert in found:
                values[i] = convert(values[i], col, connection)
        return self.model.from_db(DEFAULT_DB_ALIAS, self.attnames, values)


@cache
def insert_fields(model: type[Model]) -> tuple[Any, ...]:
    """The fields an INSERT of ``model`` writes: every concrete field but the auto primary key."""
    return tuple(f for f in model._meta.concrete_fields if not f.primary_key)


@cache
def insert_sql(model: type[Model], rows: int = 1) -> str:
    """``INSERT INTO <table> (<columns>) VALUES (...), ... RETURNING id`` for ``rows`` instances."""
    fields = insert_fields(model)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    columns = ", ".join(f'"{f.column}"' for f in fields)
    return f'INSERT INTO "{model._meta.db_table}" ({columns}) VALUES {", ".join([one] * rows)} RETURNING "id"'  # noqa: S608


@cache
def _decimal_fields(model: type[Model]) -> tuple[Any, ...]:
    return tuple(f for f in model._meta.concrete_fields if isinstance(f, DecimalField))


class _Quanta(dict[int, Decimal]):
    def __missing__(self, places: int) -> Decimal:
        self[places] = Decimal(1).scaleb(-places)
        return self[places]


_QUANTA = _Quanta()


def insert_params(instance: Model) -> list[Any]:
    """The values of ``instance`` in ``insert_fields`` order, prepared as ``save()`` would prepare them."""
    return [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in insert_fields(type(instance))]


def mark_saved(instance: M, pk: int) -> M:
    """Give a raw-inserted instance its primary key and the state of a saved row, its decimals as stored.

    A ``numeric(p, s)`` column keeps ``s`` places (rounding half away from
    zero), so a Decimal reads back as, say, ``-0.120150000000`` where Python
    held ``-0.12015000``: the instance is given the stored values, as if read
    back, so what is derived from it (sums, audit text) matches a re-read.
    """
    for field in _decimal_fields(type(instance)):
        value = getattr(instance, field.attname)
        if isinstance(value, Decimal) and value.is_finite():
            setattr(instance, field.attname, value.quantize(_QUANTA[field.decimal_places], rounding=ROUND_HALF_UP))
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = DEFAULT_DB_ALIAS
    return instance
