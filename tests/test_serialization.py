"""JSON only: a pickled task message pushed into the queue is refused, recorded, never executed.

Anyone who can write to Redis can queue a message; with pickle accepted its body would run code
in the worker as it is decoded. The test copies the envelope of a real message from the queue,
swaps in a pickled body that creates a marker file when unpickled, and lets a real worker take it.
"""

import base64
import builtins
import json
import pickle
import uuid
from pathlib import Path

import pytest
from celery import current_app
from django.conf import settings

from monitoring.models import Status, TaskExecution
from tests.processes import wait_for

pytestmark = pytest.mark.integration


class CreatesFile:
    """Unpickling this opens (so creates) the file: the proof that a body was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (builtins.open, (str(self.path), "w"))


def test_only_json_is_accepted_for_tasks_and_results():
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_TASK_SERIALIZER == settings.CELERY_RESULT_SERIALIZER == "json"
    assert current_app.conf.accept_content == ["json"]


def test_a_pickled_message_is_rejected_and_recorded_and_never_runs(broker, start_worker, tmp_path):
    marker = tmp_path / "unpickled"
    # A real message's envelope, as kombu's Redis transport stores it in the 'celery' list.
    current_app.send_task("tests.add", args=(1, 2))
    envelope = json.loads(broker.lpop("celery"))
    task_id = str(uuid.uuid4())
    args_kwargs_embed = ((CreatesFile(marker),), {}, {})
    envelope["body"] = base64.b64encode(pickle.dumps(args_kwargs_embed, protocol=2)).decode()
    envelope["content-type"] = "application/x-python-serialize"
    envelope["content-encoding"] = "binary"
    envelope["headers"].update(id=task_id, root_id=task_id, argsrepr="(...)")
    envelope["properties"]["correlation_id"] = task_id
    envelope["properties"]["delivery_tag"] = str(uuid.uuid4())
    broker.lpush("celery", json.dumps(envelope))
    # Behind it, an ordinary task: once it has run, the worker has been through the queue.
    after = current_app.send_task("tests.add", args=(2, 3))

    start_worker("w1", "--concurrency=1")
    wait_for(
        lambda: TaskExecution.objects.filter(task_id=after.id, status=Status.SUCCEEDED).exists(),
        timeout=60,
    )

    [row] = TaskExecution.objects.filter(task_id=task_id)
    assert (row.status, row.task_name, row.error_type) == (
        Status.REJECTED,
        "tests.add",
        "ContentDisallowed",
    )
    assert not marker.exists()
    # Rejected without requeueing: it is not delivered again and again.
    assert broker.llen("celery") == 0
    assert broker.hlen("unacked") == 0
