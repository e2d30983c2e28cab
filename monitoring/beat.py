"""Beat scheduler: django-celery-beat's DatabaseScheduler, fed with the jobs declared in settings.

`NEWSBEAT_PERIODIC_JOBS` maps a job name to `{"task": ..., "every": timedelta}` (or
`"crontab": {...}` fields). At start-up each missing job is created in the schedule tables;
existing ones are left as they are, so what an operator paused or retimed in the admin survives
restarts. `python manage.py sync_jobs --reset` puts the declared schedules back.
"""

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_beat import schedulers
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

logger = logging.getLogger(__name__)


def declared_schedule(job: dict[str, Any]) -> dict[str, Any]:
    """The PeriodicTask fields for a declared job's schedule."""
    if "every" in job:
        every: timedelta = job["every"]
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=int(every.total_seconds()), period=IntervalSchedule.SECONDS
        )
        # A run that waited longer than one interval in the queue is dropped: the next slot
        # does the same work (coalescing instead of a pile-up after an outage).
        return {"interval": interval, "crontab": None, "expire_seconds": interval.every}
    crontab, _ = CrontabSchedule.objects.get_or_create(
        timezone=settings.CELERY_TIMEZONE, **job["crontab"]
    )
    return {"interval": None, "crontab": crontab, "expire_seconds": job.get("expire_seconds")}


@transaction.atomic
def sync_jobs(jobs: dict[str, dict[str, Any]], reset: bool = False) -> dict[str, str]:
    """Create missing periodic jobs (and with `reset`, restore declared schedules).

    Returns what happened to each job: "created", "reset" or "kept".
    """
    outcome = {}
    for name, job in jobs.items():
        existing = PeriodicTask.objects.filter(name=name).first()
        if existing is not None and not reset:
            outcome[name] = "kept"
            continue
        fields = {"task": job["task"], **declared_schedule(job)}
        if existing is None:
            # A start time in the past makes django-celery-beat run a new job at once instead
            # of one interval after start-up.
            PeriodicTask.objects.create(name=name, start_time=timezone.now(), **fields)
            outcome[name] = "created"
        else:
            for field, value in fields.items():
                setattr(existing, field, value)
            existing.enabled = True
            existing.save()
            outcome[name] = "reset"
        logger.info("event=job_synced job=%s outcome=%s", name, outcome[name])
    return outcome


class DatabaseScheduler(schedulers.DatabaseScheduler):
    def setup_schedule(self) -> None:
        sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
        # Not calling install_default_entries(): its only entry, celery.backend_cleanup, does
        # nothing for the Redis result backend, whose keys expire by themselves.
        self.update_from_dict(self.app.conf.beat_schedule)
