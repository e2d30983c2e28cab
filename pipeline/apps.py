from django.apps import AppConfig


class PipelineConfig(AppConfig):
    name = "pipeline"
    verbose_name = "Pipeline"

    def ready(self) -> None:
        # The project's own system checks (secret key, feed addresses, Expat): pipeline is the
        # project's app, and monitoring must stay free of project specifics.
        from project import checks

        checks.register()
