import json

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from monitoring.beat import sync_jobs
from monitoring.models import Status, TaskExecution
from tests.processes import wait_for


@pytest.mark.django_db
def test_runjob_sends_the_job_through_the_periodic_path(broker, capsys):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)

    call_command("runjob", "poll-news")

    [raw] = broker.lrange("celery", 0, -1)
    headers = json.loads(raw)["headers"]
    assert (headers["task"], headers["periodic_task_name"]) == ("pipeline.poll_news", "poll-news")
    assert f"sent pipeline.poll_news as task {headers['id']}" in capsys.readouterr().out


@pytest.mark.django_db
def test_runjob_names_the_known_jobs_when_the_name_is_wrong(broker):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)

    with pytest.raises(CommandError, match=r"no periodic job named 'poll-nwes'.*poll-news"):
        call_command("runjob", "poll-nwes")

    assert broker.llen("celery") == 0


@pytest.mark.integration
def test_runjob_wait_reports_how_the_run_ended_and_respects_the_lock(worker, broker, capsys):
    sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS)

    call_command("runjob", "poll-news", wait=30)
    assert "poll-news: succeeded in" in capsys.readouterr().out

    # While a run holds the job's lock, a manual run is skipped, and says so.
    broker.set("newsbeat:job-lock:poll-news", "someone-else", ex=60)
    with pytest.raises(CommandError, match="ended skipped"):
        call_command("runjob", "poll-news", wait=30)
    out = capsys.readouterr().out
    assert "Overlap: previous run of poll-news (someone-else) is still running" in out
    wait_for(lambda: TaskExecution.objects.filter(status=Status.SKIPPED).exists())
