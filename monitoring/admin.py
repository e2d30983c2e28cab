"""Execution history and job health policy in the admin.

The history is read-only and stays fast with tens of millions of rows (issue 5): no COUNT over
the table (see EstimatedCountPaginator), filters whose choices come from the schedule and the
Celery app instead of a DISTINCT over the rows, an index under every filter and the search
(monitoring/models.py), and no date hierarchy: Django's runs SELECT DISTINCT over the dates of
every row in the range it shows. The "started" filter (today, past 7 days, this month) covers
what the history keeps (NEWSBEAT_EXECUTION_RETENTION_DAYS) with range scans of an index.
"""

from functools import cache
from math import ceil
from typing import Any
from urllib.parse import urlencode

from celery import current_app
from django.conf import settings
from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connections
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from .models import JobPolicy, TaskExecution

# The admin index shows the job status table above the apps (templates/monitoring/).
admin.site.index_template = "monitoring/admin_index.html"

CHILDREN_SHOWN = 20


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts more than `cap` rows.

    Unfiltered, the count is PostgreSQL's estimate of the table's rows (pg_class.reltuples,
    kept by autovacuum and ANALYZE) once that passes the cap. Otherwise the rows are counted up
    to cap + 1 along the list's own ordering, so the same index that serves the page serves
    the count. `count_kind` says what the number is, for the template: "exact", "estimate"
    or "at_least" (more than `cap` matched; the pages stop there).
    """

    cap = 10_000
    count_kind = "exact"

    @cached_property
    def count(self) -> int:
        if not self.object_list.query.where:
            estimate = table_estimate(self.object_list)
            if estimate is not None and estimate > self.cap:
                self.count_kind = "estimate"
                return estimate
        counted = self.object_list[: self.cap + 1].count()
        self.count_kind = "exact" if counted <= self.cap else "at_least"
        return min(counted, self.cap)

    @cached_property
    def num_pages(self) -> int:
        # Pages stop at the cap even when the estimate runs to millions: page N costs an
        # OFFSET of N pages along the index, and the filters narrow a list faster anyway.
        if self.count == 0 and not self.allow_empty_first_page:
            return 0
        hits = max(1, min(self.count, self.cap) - self.orphans)
        return ceil(hits / self.per_page)


def table_estimate(queryset: Any) -> int | None:
    """The planner's estimate of the table's rows; None off PostgreSQL or before the table was
    first analysed (reltuples is -1 then)."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [connection.ops.quote_name(queryset.model._meta.db_table)],
        )
        row = cursor.fetchone()
    return row[0] if row and row[0] >= 0 else None


@cache
def registered_task_names() -> frozenset[str]:
    """The tasks the Celery app knows, Celery's own left out. A web process has not imported
    every task module, so this runs the worker's start-up import once."""
    current_app.loader.import_default_modules()
    return frozenset(name for name in current_app.tasks if not name.startswith("celery."))


class ChoicesFromScheduleFilter(admin.SimpleListFilter):
    """A filter on one column whose choices are known without reading the rows (a DISTINCT
    over millions of rows is what made the stock filter slow). The chosen value stays a
    choice even when it is no longer known, so old rows can still be filtered."""

    def known_values(self) -> set[str]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        values = self.known_values() | ({self.value()} if self.value() else set())
        return [(value, value) for value in sorted(values)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(**{self.parameter_name: self.value()})
        return queryset


class TaskNameFilter(ChoicesFromScheduleFilter):
    title = "task"
    parameter_name = "task_name"

    def known_values(self) -> set[str]:
        return set(registered_task_names()) | set(
            PeriodicTask.objects.values_list("task", flat=True)
        )


class JobFilter(ChoicesFromScheduleFilter):
    title = "job"
    parameter_name = "periodic_task_name"

    def known_values(self) -> set[str]:
        return set(PeriodicTask.objects.values_list("name", flat=True))


def changelist_url(**params: str) -> str:
    return f"{reverse('admin:monitoring_taskexecution_changelist')}?{urlencode(params)}"


@admin.register(TaskExecution)
class TaskExecutionAdmin(admin.ModelAdmin):
    """Execution history: read-only for everyone, the record of what ran."""

    list_display = (
        "started_at",
        "task_name",
        "periodic_task_name",
        "status",
        "duration",
        "attempt",
        "worker",
    )
    list_filter = ("status", TaskNameFilter, JobFilter, "started_at")
    # Exact, not the "=" prefix: that is iexact, UPPER(task_id) = UPPER(...), which no index
    # on task_id serves.
    search_fields = ("task_id__exact",)
    search_help_text = "Search by task id."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    # Facet counts would count every filter choice over the table.
    show_facets = admin.ShowFacets.NEVER
    fieldsets = (
        (None, {"fields": ("task_id", "task_name", "periodic_task_name", "status", "attempt")}),
        ("Timing", {"fields": ("started_at", "finished_at", "duration")}),
        (
            "Where",
            {
                "fields": (
                    "worker",
                    "queue",
                    "job_link",
                    "parent_link",
                    "children_links",
                    "root_id",
                    "flower_link",
                )
            },
        ),
        ("Call", {"fields": ("args", "kwargs", "result")}),
        ("Error", {"fields": ("error_type", "error_message", "traceback")}),
    )

    def get_readonly_fields(self, request, obj=None):
        links = ["job_link", "parent_link", "children_links", "flower_link"]
        return [f.name for f in self.model._meta.fields] + links

    @admin.display(description="Flower")
    def flower_link(self, obj: TaskExecution) -> str:
        url = f"{settings.NEWSBEAT_FLOWER_URL.rstrip('/')}/task/{obj.task_id}"
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.display(description="periodic job")
    def job_link(self, obj: TaskExecution) -> str:
        if not obj.periodic_task_name:
            return "-"
        pk = (
            PeriodicTask.objects.filter(name=obj.periodic_task_name)
            .values_list("pk", flat=True)
            .first()
        )
        if pk is None:  # the job was deleted or renamed since
            return obj.periodic_task_name
        url = reverse("admin:django_celery_beat_periodictask_change", args=[pk])
        return format_html('<a href="{}">{}</a>', url, obj.periodic_task_name)

    @admin.display(description="parent")
    def parent_link(self, obj: TaskExecution) -> str:
        # Every attempt of the parent task id: a retried parent has several rows.
        if not obj.parent_id:
            return "-"
        return format_html('<a href="{}">{}</a>', changelist_url(q=obj.parent_id), obj.parent_id)

    @admin.display(description="children")
    def children_links(self, obj: TaskExecution) -> str:
        # The first few, and a link to the list of all of them (execution_parent_idx).
        children = list(
            TaskExecution.objects.filter(parent_id=obj.task_id)
            .order_by("started_at", "id")
            .values_list("pk", "task_name", "status")[:CHILDREN_SHOWN]
        )
        if not children:
            return "-"
        links = format_html_join(
            ", ",
            '<a href="{}">{} ({})</a>',
            (
                (reverse("admin:monitoring_taskexecution_change", args=[pk]), name, status)
                for pk, name, status in children
            ),
        )
        every = changelist_url(parent_id=obj.task_id)
        return format_html('{} · <a href="{}">all children</a>', links, every)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The detail page still opens (view permission); nothing on it can be saved.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class JobPolicyInline(admin.StackedInline):
    model = JobPolicy
    can_delete = False
    max_num = 1


# django-celery-beat's job admin, with the job's health policy on the same page.
admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    inlines = [*BeatPeriodicTaskAdmin.inlines, JobPolicyInline]
