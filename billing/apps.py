"""App config of billing: registers the money checks that the scheduler runs when it admits a lease and workloads
when it makes or moves a volume or opens a data-access session, and the e-mail workloads' wipe job sends through
billing when volumes whose grace ran out go to wiping."""

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing: usage, invoices, payments and payouts"

    def ready(self) -> None:
        from billing.access_admission import admit_data_access
        from billing.funds import admit, admit_volume, admit_volume_move
        from billing.grace import volumes_wiping_tell
        from scheduler import admission
        from workloads.data_access import open_check_register
        from workloads.volume_moves import request_check_register
        from workloads.volumes import create_check_register, wipe_listener_register

        admission.register(admit)
        create_check_register(admit_volume)
        request_check_register(admit_volume_move)
        open_check_register(admit_data_access)
        wipe_listener_register(volumes_wiping_tell)
