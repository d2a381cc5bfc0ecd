"""App config of the workloads: registers what brings a lease's workload back when a stopped lease starts again."""

from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "workloads"
    verbose_name = "Workloads"

    def ready(self) -> None:
        from scheduler import restarts
        from workloads.restarts import lease_restarted

        restarts.register(lease_restarted)
