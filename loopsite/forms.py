"""Form fields shared by every app: integers that the database can hold.

SQLite raises OverflowError (a 500) for an integer parameter above 2**63-1 (Django itself guards
only plain `pk=` lookups, not `pk__in`, foreign keys or saved values), so every integer read from a
request that reaches a query or a row goes through these fields or `bounded_int`.
"""

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

# The range of a 64-bit signed integer column (BigAutoField, BigIntegerField) on every backend.
DB_INT_MIN = -(2**63)
DB_INT_MAX = 2**63 - 1


def bounded_int(value, *, default: int | None = None, minimum: int = DB_INT_MIN, maximum: int = DB_INT_MAX) -> int | None:
    """`value` as an int inside [minimum, maximum], else `default` (for ids and indexes read from a request)."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return default
    return number if minimum <= number <= maximum else default


class BoundedIntegerField(forms.IntegerField):
    """An IntegerField that never lets a number outside the database's range through.

    `max_value` defaults to the largest 64-bit integer; out of range or not a number, the message gives
    the range (the page shows it beside the field's label). Messages passed in `error_messages` win.
    """

    def __init__(self, *, max_value=None, min_value=None, **kwargs):
        max_value = DB_INT_MAX if max_value is None else min(max_value, DB_INT_MAX)
        min_value = DB_INT_MIN if min_value is None else max(min_value, DB_INT_MIN)
        self.given_messages = set(kwargs.get("error_messages") or ())
        super().__init__(max_value=max_value, min_value=min_value, **kwargs)
        self.bounds = (min_value, max_value)

    def clean(self, value):
        try:
            return super().clean(value)
        except ValidationError as exc:
            codes = {getattr(error, "code", None) for error in exc.error_list}
            ours = codes & {"invalid", "max_value", "min_value"}
            if not ours or ours & self.given_messages:
                raise
            low, high = self.bounds
            raise ValidationError(f"Enter a whole number from {low} to {high}.", code=sorted(ours)[0]) from None


class BoundedModelMultipleChoiceField(forms.ModelMultipleChoiceField):
    """A ModelMultipleChoiceField whose integer keys are checked against the column's range before the
    `pk__in` query (Django checks single `pk=` lookups itself, but not `__in`)."""

    def _check_values(self, value):
        key_field = (self.queryset.model._meta.get_field(self.to_field_name) if self.to_field_name
                     else self.queryset.model._meta.pk)
        if isinstance(key_field, (models.IntegerField, models.AutoField)):
            try:
                values = list(value)
            except TypeError:
                values = []
            for pk in values:
                if isinstance(pk, (list, dict)) or bounded_int(pk) is None:
                    raise ValidationError(
                        self.error_messages["invalid_pk_value"], code="invalid_pk_value", params={"pk": pk},
                    )
        return super()._check_values(value)
