"""Celery tasks of accounts: purge expired API state (beat); tell an e-mail's owner someone tried to register it."""

from celery import shared_task

from accounts.services_maintenance import purge_expired


@shared_task(name="accounts.purge_expired")
def purge_expired_task() -> int:
    return purge_expired()


@shared_task(name="accounts.send_registration_attempt_mail")
def send_registration_attempt_mail(email: str) -> None:
    from accounts.services import registration_attempt_notify

    registration_attempt_notify(email=email)
