"""Volumes in a real browser (issue 16): the customer makes a volume on /volumes/ (the server's agent then reports
it made), rents with it mounted from the rent form, sees it "In use" on /volumes/ and mounted on the lease page,
ends the lease and sees it "Ready" again, deletes it through the confirmation step and sees it "Wiping".

The agent's report of the made volume goes through the service that applies agent reports (workloads.volumes), as
the workloads tests do; the pages do everything else."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.utils import timezone

from inventory.models import Server
from scheduler.models import Lease
from tests.browser.conftest import screenshot
from tests.factories import GpuModelFactory, online_server
from workloads import volumes
from workloads.models import Volume, VolumeState

pytestmark = pytest.mark.django_db(transaction=True)


def _state(page, volume: Volume) -> str:
    return page.locator(f'tr[data-volume="{volume.pk}"] .volume-state').inner_text().replace("\u00a0", " ").strip()


def test_a_customer_makes_a_volume_mounts_it_into_a_rented_workload_and_deletes_it(open_as, alice, bob):
    model = GpuModelFactory(slug="volume-flow-h100", name="Volume Flow H100")
    server = online_server(organization=bob.org, gpus=4, gpu_model=model, name="bob-volume-flow")
    Server.objects.filter(pk=server.pk).update(volume_disk_gb=500)
    offer = server.offers.get()
    offer.storage_gb_month_price = Decimal("0.1000")
    offer.save(update_fields=["storage_gb_month_price"])
    page = open_as(alice.user)

    # Make it.
    page.goto("/")
    page.locator('nav a[href="/volumes/"]').click()
    page.wait_for_url(re.compile(r"/volumes/$"))
    form = page.locator("#volume-form")
    form.get_by_label("Name").fill("datasets")
    form.get_by_label("Server").select_option(str(server.pk))
    form.get_by_label("Size (GB)").fill("50")
    form.locator("#create-volume").click()
    page.wait_for_url(re.compile(r"/volumes/$"))
    volume = Volume.objects.get(organization=alice.org, name="datasets")
    assert (volume.size_gb, volume.server_id) == (50, server.pk)
    assert _state(page, volume) == "Creating"

    # The server's agent makes it and says so.
    volumes.volume_reports_apply(
        server=server, entries=[{"id": volume.pk, "state": "ready", "used_gb": 0, "message": ""}], at=timezone.now()
    )
    page.reload()
    assert _state(page, volume) == "Ready"
    screenshot(page, "volumes")

    # Rent with it mounted at /data.
    page.goto(f"/offers/{offer.pk}/")
    rent = page.locator("#rent-form")
    rent.wait_for()
    rent.get_by_label(re.compile(r"cards|GPUs", re.IGNORECASE)).first.fill("1")
    rent.locator('input[name="workload-image"]').fill("nginx:1.27")
    rent.locator('select[name="workload-volume"]').select_option(str(volume.pk))
    assert rent.locator('input[name="workload-volume_path"]').input_value() == "/data"
    rent.locator("#rent-submit").click()
    page.wait_for_url(re.compile(r"/leases/\d+/"))
    lease = Lease.objects.get(organization=alice.org)
    mounted = page.locator("#lease-volumes")
    assert "datasets" in mounted.inner_text() and "/data" in mounted.inner_text()

    page.goto("/volumes/")
    assert _state(page, volume) == "In use"

    # End the lease: the volume is ready again.
    page.goto(f"/leases/{lease.pk}/")
    page.on("dialog", lambda dialog: dialog.accept())
    confirm = page.locator("form:has(#end-lease) input[type=checkbox]")
    if confirm.count():
        confirm.first.check()
    page.locator("#end-lease").click()
    page.locator("#lease-state", has_text=re.compile(r"ended", re.IGNORECASE)).wait_for()
    page.goto("/volumes/")
    assert _state(page, volume) == "Ready"

    # Delete it: asked first, then wiped.
    page.locator(f'tr[data-volume="{volume.pk}"] button', has_text="Delete").click()
    page.locator("#volume-confirm").wait_for()
    assert "Delete the volume datasets?" in page.locator("#volume-confirm").inner_text()
    page.locator("#volume-confirm-delete").click()
    page.wait_for_url(re.compile(r"/volumes/$"))
    assert _state(page, volume) == "Wiping"
    volume.refresh_from_db()
    assert volume.state == VolumeState.WIPING
    assert page.errors == [], page.errors
