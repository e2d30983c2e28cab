from django.conf import settings
from django.contrib import admin
from django.utils.html import format_html

from .models import TaskExecution


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
    list_filter = ("status", "task_name", "periodic_task_name", "started_at")
    search_fields = ("=task_id",)
    date_hierarchy = "started_at"
    show_full_result_count = False
    fieldsets = (
        (None, {"fields": ("task_id", "task_name", "periodic_task_name", "status", "attempt")}),
        ("Timing", {"fields": ("started_at", "finished_at", "duration")}),
        ("Where", {"fields": ("worker", "queue", "parent_id", "root_id", "flower_link")}),
        ("Call", {"fields": ("args", "kwargs", "result")}),
        ("Error", {"fields": ("error_type", "error_message", "traceback")}),
    )

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields] + ["flower_link"]

    @admin.display(description="Flower")
    def flower_link(self, obj: TaskExecution) -> str:
        url = f"{settings.NEWSBEAT_FLOWER_URL.rstrip('/')}/task/{obj.task_id}"
        return format_html('<a href="{}">{}</a>', url, url)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The detail page still opens (view permission); nothing on it can be saved.
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
