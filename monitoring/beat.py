"""Beat scheduler: django-celery-beat's DatabaseScheduler, fed with the jobs declared in settings.

`NEWSBEAT_PERIODIC_JOBS` maps a job name to `{"task": ..., "every": timedelta}` (or
`"crontab": {...}` fields). At start-up each missing job is created in the schedule tables;
existing ones are left as they are, so what an operator paused or retimed in the admin survives
restarts. `python manage.py sync_jobs --reset` puts the declared schedules back.
"""

import logging
import os
import socket
import uuid
from datetime import timedelta
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_beat import schedulers
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from .broker import KEY_PREFIX, redis_client

logger = logging.getLogger(__name__)

LEADER_KEY = f"{KEY_PREFIX}beat-leader"
# Take the lock if it is free, renew it if it is ours, in one step.
_HOLD = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


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
            try:
                with transaction.atomic():
                    # A start time makes django-celery-beat run a new job at once instead of
                    # one interval after start-up.
                    PeriodicTask.objects.create(name=name, start_time=timezone.now(), **fields)
                outcome[name] = "created"
            except (IntegrityError, ValidationError):
                outcome[name] = "kept"  # another beat starting at the same moment created it
        else:
            for field, value in fields.items():
                setattr(existing, field, value)
            existing.enabled = True
            existing.save()
            outcome[name] = "reset"
        logger.info("event=job_synced job=%s outcome=%s", name, outcome[name])
    return outcome


class DatabaseScheduler(schedulers.DatabaseScheduler):
    """Only one beat dispatches: the one holding a Redis lock it renews every tick.

    With renewal period R (NEWSBEAT_BEAT_LOCK_SECONDS) the active beat ticks at least every R/2
    and the lock lives 1.5 R; a standby checks every R/2, so it takes over within 2 R of the
    active beat's death. On taking over it rereads the schedule from the database, where the
    active beat wrote each dispatch at once (beat_sync_every = 1). Should the dead beat have sent
    a slot without recording it, the slot header lets the workers recognise the second copy.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.beat_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.is_leader = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        period = float(settings.NEWSBEAT_BEAT_LOCK_SECONDS)
        leader = self.hold_leadership(period)
        if leader and not self.is_leader:
            logger.info("event=beat_active beat=%s", self.beat_id)
            self._initial_read = True  # reread last_run_at: the previous leader moved it on
        elif not leader and self.is_leader:
            logger.warning("event=beat_lost_leadership beat=%s", self.beat_id)
        self.is_leader = leader
        if not leader:
            return period / 2
        return min(super().tick(*args, **kwargs), period / 2)

    def hold_leadership(self, period: float) -> bool:
        try:
            held = redis_client().eval(_HOLD, 1, LEADER_KEY, self.beat_id, int(period * 1500))
        except redis.RedisError:
            logger.exception("event=beat_lock_unavailable beat=%s", self.beat_id)
            return False
        if not held and (self.is_leader or not getattr(self, "_standby_logged", False)):
            holder = redis_client().get(LEADER_KEY)
            logger.info(
                "event=beat_standby beat=%s active=%s",
                self.beat_id,
                holder.decode() if holder else "?",
            )
            self._standby_logged = True
        return bool(held)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any):
        # The slot is named by the run it follows: two beats that read the same last_run_at
        # dispatch the same slot, and the worker-side guard runs it once.
        if entry.last_run_at is not None:
            headers = {**entry.options.get("headers", {})}
            headers["periodic_slot"] = entry.last_run_at.isoformat()
            entry.options = {**entry.options, "headers": headers}
        return super().apply_async(entry, producer, advance, **kwargs)

    def setup_schedule(self) -> None:
        sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)
        # Not calling install_default_entries(): its only entry, celery.backend_cleanup, does
        # nothing for the Redis result backend, whose keys expire by themselves.
        self.update_from_dict(self.app.conf.beat_schedule)
