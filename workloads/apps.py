"""App config of the workloads: registers what brings a lease's workload back when a stopped lease starts again, and
the check that a server's disk lent for volumes covers its volumes."""

from django.apps import AppConfig


class WorkloadsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "workloads"
    verbose_name = "Workloads"

    def ready(self) -> None:
        from inventory.services import volume_disk_check_register
        from scheduler import restarts
        from workloads.restarts import lease_restarted
        from workloads.volumes import volume_disk_check

        restarts.register(lease_restarted)
        volume_disk_check_register(volume_disk_check)  # a server never lends less disk than its volumes take
