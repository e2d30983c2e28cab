from django.contrib import admin, messages
from django.db import models

from .models import STATISTICS, Article, Entity, SentimentPoint, Source
from .tasks import fetch_source


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "kind",
        "enabled",
        "last_outcome",
        "consecutive_failures",
        "last_fetched_at",
    )
    list_filter = ("kind", "enabled", "last_outcome")
    search_fields = ("name", "url")
    actions = ["fetch_now"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    # Written by the fetch task; an edit here would be overwritten by the next fetch.
    readonly_fields = (
        "etag",
        "last_modified",
        "last_fetched_at",
        "last_outcome",
        "last_error",
        "consecutive_failures",
        "created",
        "updated",
    )
    fieldsets = (
        (None, {"fields": ("name", "url", "kind", "enabled")}),
        (
            "Last fetch",
            {
                "fields": (
                    "last_fetched_at",
                    "last_outcome",
                    "last_error",
                    "consecutive_failures",
                    "etag",
                    "last_modified",
                )
            },
        ),
        ("Record", {"fields": ("created", "updated")}),
    )

    @admin.action(description="Fetch now")
    def fetch_now(self, request, queryset) -> None:
        source_ids = list(queryset.filter(enabled=True).values_list("id", flat=True))
        for source_id in source_ids:
            fetch_source.delay(source_id)
        skipped = queryset.count() - len(source_ids)
        message = f"Queued a fetch of {len(source_ids)} source(s)."
        if skipped:
            message += f" Skipped {skipped} disabled source(s)."
        self.message_user(request, message, messages.SUCCESS if source_ids else messages.WARNING)


@admin.register(Entity)
class EntityAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "aliases")
    # aliases is a JSON list; icontains searches its text.
    search_fields = ("name", "slug", "aliases")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(Article)
class ArticleAdmin(admin.ModelAdmin):
    list_display = ("title", "source", "published", "fetched_at", "sentiment")
    list_select_related = ("source",)
    list_filter = ("source", "published", "fetched_at")
    search_fields = ("title", "=guid")
    date_hierarchy = "fetched_at"
    raw_id_fields = ("source", "entities")
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    # The count of a large filtered table is a full scan; "Show all" needs no exact number.
    show_full_result_count = False


@admin.register(SentimentPoint)
class SentimentPointAdmin(admin.ModelAdmin):
    """Computed by pipeline.aggregate_sentiment: read-only, the next aggregation rewrites it."""

    list_display = ("entity", "period_start", "period_length", *STATISTICS)
    list_select_related = ("entity",)
    list_filter = ("period_start", "entity")
    search_fields = ("entity__name", "entity__slug")
    date_hierarchy = "period_start"
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
