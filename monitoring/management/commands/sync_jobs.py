from django.conf import settings
from django.core.management.base import BaseCommand

from monitoring.beat import sync_jobs


class Command(BaseCommand):
    help = (
        "Create the periodic jobs declared in NEWSBEAT_PERIODIC_JOBS that are missing from the "
        "schedule tables. Beat does this at start-up; --reset also restores declared schedules."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset",
            action="store_true",
            help="put back the declared schedule of jobs that exist (and enable them)",
        )

    def handle(self, *args, reset: bool = False, **options):
        for name, outcome in sync_jobs(settings.NEWSBEAT_PERIODIC_JOBS, reset=reset).items():
            self.stdout.write(f"{name}: {outcome}")
