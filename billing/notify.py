"""E-mail to an organisation's people about its money (the funds job's notices, the volumes' grace period)."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction

from accounts.models import Membership, Organization, Role

logger = logging.getLogger("billing.funds")


def mail_org(org: Organization, subject: str, body: str) -> None:
    """To the organisation's owners, admins and billing members, once the transaction is committed."""
    roles = [Role.OWNER, Role.ADMIN, Role.BILLING]
    recipients = sorted(
        set(Membership.objects.for_org(org).filter(role__in=roles).values_list("user__email", flat=True))
    )
    if not recipients:
        return

    def send() -> None:
        try:
            send_mail(f"[Suanli] {subject}", body, settings.DEFAULT_FROM_EMAIL, recipients)
        except Exception:  # the mail server is down: the notice stands on the site; the job goes on
            logger.exception("funds: could not mail organisation %s", org.pk)

    transaction.on_commit(send)
