from django.contrib import admin
from django.urls import path

from monitoring import health, metrics, views

urlpatterns = [
    path("health/live/", health.live, name="health-live"),
    path("health/", health.health, name="health"),
    path("metrics", metrics.metrics, name="metrics"),
    path("status/", views.status, name="status"),
    path("admin/", admin.site.urls),
]
