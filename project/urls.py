from django.contrib import admin
from django.urls import path

from monitoring import health, metrics

urlpatterns = [
    path("health/live/", health.live, name="health-live"),
    path("health/", health.health, name="health"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]
