"""The job status table for the admin index, and the filters the status templates use."""

from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone
from django.utils.formats import date_format

from monitoring import views

register = template.Library()


@register.inclusion_tag("monitoring/job_table.html")
def job_status_table() -> dict[str, Any]:
    return views.table_context(timezone.now())


@register.filter
def seconds(value: float | None) -> str:
    """A duration in seconds, short: "0.42 s", "12.3 s", "4 min 5 s"; "-" for None."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"


@register.filter
def cell(value: Any) -> str:
    """A status panel's cell as text (the template still escapes it)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        local = timezone.localtime(value) if timezone.is_aware(value) else value
        return date_format(local, "Y-m-d H:i")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
