from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring"

    def ready(self) -> None:
        from . import control, signals  # noqa: F401 - importing control registers its command

        signals.signals_connect()
