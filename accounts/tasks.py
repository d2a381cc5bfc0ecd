from celery import shared_task

from accounts.services_maintenance import purge_expired


@shared_task(name="accounts.purge_expired")
def purge_expired_task() -> int:
    return purge_expired()
