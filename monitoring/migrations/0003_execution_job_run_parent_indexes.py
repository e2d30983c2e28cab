from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL, a plain CREATE INDEX elsewhere (SQLite).

    The audit table may already hold millions of rows: a plain CREATE INDEX would block every
    task's audit write for as long as the build takes.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_forwards(
                self, app_label, schema_editor, from_state, to_state
            )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_backwards(
                self, app_label, schema_editor, from_state, to_state
            )


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("monitoring", "0002_jobpolicy"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="taskexecution",
            index=models.Index(
                condition=models.Q(("periodic_task_name", ""), _negated=True),
                fields=["periodic_task_name", "-started_at"],
                name="execution_job_run_idx",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="taskexecution",
            index=models.Index(fields=["parent_id", "started_at"], name="execution_parent_idx"),
        ),
    ]
