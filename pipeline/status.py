"""The pipeline's panel on the /status/ page (settings.NEWSBEAT_STATUS_PANELS)."""

from datetime import datetime, timedelta

from django.db.models import Count, Q

from .models import Source


def source_health(now: datetime) -> tuple[str, list[str], list[list]]:
    """One row per feed source: last outcome, failures in a row, articles per day this week."""
    week = now - timedelta(days=7)
    sources = Source.objects.annotate(
        week_articles=Count("articles", filter=Q(articles__fetched_at__gte=week))
    ).order_by("-consecutive_failures", "name")
    columns = [
        "source",
        "kind",
        "enabled",
        "last outcome",
        "last fetched",
        "failures in a row",
        "articles per day (7 days)",
    ]
    rows = [
        [
            s.name,
            s.kind,
            "yes" if s.enabled else "no",
            s.last_outcome,
            s.last_fetched_at,
            s.consecutive_failures,
            round(s.week_articles / 7, 1),
        ]
        for s in sources
    ]
    return "Sources", columns, rows
