import datetime

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("django_celery_beat", "0019_alter_periodictasks_options"),
        ("monitoring", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="JobPolicy",
            fields=[
                (
                    "periodic_task",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="policy",
                        serialize=False,
                        to="django_celery_beat.periodictask",
                    ),
                ),
                (
                    "grace",
                    models.DurationField(
                        blank=True,
                        validators=[django.core.validators.MinValueValidator(datetime.timedelta(0))],
                        help_text="How long past due the job may be before it is down. Empty: "
                        "one period of its schedule.",
                        null=True,
                    ),
                ),
            ],
            options={
                "verbose_name": "health policy",
                "verbose_name_plural": "health policy",
            },
        ),
    ]
