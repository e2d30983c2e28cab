"""Scheduling guards that live in the worker, around every task (the app's default Task class).

- No overlap: a periodic run (one sent by beat or "run now", so carrying a `periodic_task_name`
  header) takes a Redis lock named for its job; while a previous run holds it, the new run is
  skipped and recorded as such. The lock expires after the hard time limit, so a dead worker
  cannot hold it for longer.
- One run per slot: beat stamps each dispatch with its slot (`periodic_slot`); a second message
  for the same job and slot, for example from a beat that took over, is recognised and skipped.
- Poison: a message redelivered because its worker died is counted; past
  `NEWSBEAT_MAX_DELIVERIES` it is failed instead of run again.

Redis here is the broker itself: if it does not answer, the task could not have arrived either,
so a guard that cannot reach it logs and lets the task run (at-least-once over at-most-once).
"""

import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore
from django.conf import settings

from . import signals
from .broker import KEY_PREFIX, redis_client

logger = logging.getLogger(__name__)


class PoisonTaskError(Exception):
    """A task whose message kept killing its worker; it is failed instead of run again."""


def lock_key(job: str) -> str:
    return f"{KEY_PREFIX}job-lock:{job}"


def lock_ttl_seconds() -> int:
    # A run cannot outlive the hard time limit, so neither may its lock.
    return int(settings.CELERY_TASK_TIME_LIMIT) + 5


# Compare-and-delete: release the lock only if this run still holds it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class GuardedTask(Task):
    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        request = self.request
        try:
            self._check_poison(task_id, request)
            job = signals.job_name(request)
            if job:
                self._check_slot(task_id, job, request)
                self._take_lock(task_id, job)
        except redis.RedisError:
            logger.exception("event=guard_unavailable task_id=%s task=%s", task_id, self.name)

    def after_return(self, status, retval, task_id, args, kwargs, einfo) -> None:
        job = signals.job_name(self.request)
        if not job or status == "IGNORED":
            return
        try:
            redis_client().eval(_RELEASE, 1, lock_key(job), task_id)
        except redis.RedisError:
            logger.exception("event=lock_release_failed job=%s task_id=%s", job, task_id)

    def _check_poison(self, task_id: str, request: Any) -> None:
        if not (request.delivery_info or {}).get("redelivered"):
            return
        key = f"{KEY_PREFIX}deliveries:{task_id}"
        client = redis_client()
        deliveries = client.incr(key) + 1  # the first delivery was not counted
        client.expire(key, 86400)
        limit = settings.NEWSBEAT_MAX_DELIVERIES
        logger.warning(
            "event=redelivered task_id=%s task=%s delivery=%d", task_id, self.name, deliveries
        )
        if deliveries > limit:
            raise PoisonTaskError(
                f"{self.name} {task_id} was delivered {deliveries} times, its worker dying "
                f"each time; not running it again (NEWSBEAT_MAX_DELIVERIES={limit})"
            )

    def _check_slot(self, task_id: str, job: str, request: Any) -> None:
        slot = signals.header(request, "periodic_slot")
        if not slot:
            return
        key = f"{KEY_PREFIX}slot:{job}:{slot}"
        client = redis_client()
        if client.set(key, task_id, nx=True, ex=7 * 86400):
            return
        owner = client.get(key)
        if owner is not None and owner.decode() != task_id:
            self._skip(
                task_id, "DuplicateSlot", f"slot {slot} of {job} already ran as {owner.decode()}"
            )

    def _take_lock(self, task_id: str, job: str) -> None:
        client = redis_client()
        key = lock_key(job)
        if client.set(key, task_id, nx=True, ex=lock_ttl_seconds()):
            return
        holder = client.get(key)
        if holder is not None and holder.decode() == task_id:
            return  # a redelivery of the run that holds the lock
        self._skip(
            task_id,
            "Overlap",
            f"previous run of {job} ({holder.decode() if holder else '?'}) is still running",
        )

    def _skip(self, task_id: str, kind: str, reason: str) -> None:
        logger.warning(
            "event=task_skipped task_id=%s task=%s reason=%s", task_id, self.name, reason
        )
        signals.note_error(task_id, kind, reason)
        raise Ignore(reason)
