"""The web pages' routes: home, dashboard, offers, leases and their workloads, SSH keys, volumes, servers, the
provider's offers and earnings, the staff pages (invoices and organisations have their own, billing/ and accounts/)."""

from django.urls import path

from billing import views as billing_views
from inventory.agent_package import wheel_filename
from marketplace import (
    views,
    views_agent,
    views_broker,
    views_data_access,
    views_leases,
    views_offers,
    views_provider,
    views_scaling,
    views_servers,
    views_staff,
    views_volume_moves,
    views_volumes,
    views_workloads,
)

app_name = "marketplace"

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("agent/", views_agent.agent_index, name="agent_index"),
    path("agent/suanli-agent.whl", views_agent.agent_wheel_latest, name="agent_wheel_latest"),
    path(f"agent/{wheel_filename()}", views_agent.agent_wheel, name="agent_wheel"),
    path("agent/suanli-agent.service", views_agent.agent_service, name="agent_service"),
    path("offers/", views_offers.offer_search, name="offer_search"),
    path("offers/<int:offer_id>/", views_offers.offer_detail, name="offer_detail"),
    path("offers/<int:offer_id>/estimate/", views_offers.offer_estimate, name="offer_estimate"),
    path("offers/<int:offer_id>/availability/", views_offers.offer_availability, name="offer_availability"),
    path("leases/", views_leases.lease_list, name="lease_list"),
    path("leases/<int:lease_id>/", views_leases.lease_detail, name="lease_detail"),
    path("leases/<int:lease_id>/live/", views_leases.lease_live, name="lease_live"),
    path("leases/<int:lease_id>/resize/", views_leases.lease_resize, name="lease_resize"),
    path("leases/<int:lease_id>/end/", views_leases.lease_end, name="lease_end"),
    path("leases/<int:lease_id>/stop/", views_leases.lease_stop, name="lease_stop"),
    path("leases/<int:lease_id>/start/", views_leases.lease_start, name="lease_start"),
    path("leases/<int:lease_id>/scaling/", views_scaling.lease_scaling_set, name="lease_scaling_set"),
    path("leases/<int:lease_id>/scaling/remove/", views_scaling.lease_scaling_remove, name="lease_scaling_remove"),
    path("leases/<int:lease_id>/workloads/", views_workloads.lease_workloads, name="lease_workloads"),
    path(
        "leases/<int:lease_id>/workloads/<int:workload_id>/restart/",
        views_workloads.workload_restart,
        name="workload_restart",
    ),
    path(
        "leases/<int:lease_id>/workloads/<int:workload_id>/stop/",
        views_workloads.workload_stop,
        name="workload_stop",
    ),
    path("ssh-keys/", views_workloads.ssh_keys, name="ssh_keys"),
    path("ssh-keys/<int:key_id>/delete/", views_workloads.ssh_key_delete, name="ssh_key_delete"),
    path("volumes/", views_volumes.volume_list, name="volume_list"),
    path("volumes/<int:volume_id>/delete/", views_volumes.volume_delete, name="volume_delete"),
    path("volumes/<int:volume_id>/move/", views_volumes.volume_move, name="volume_move"),
    path("leases/<int:lease_id>/move/", views_volume_moves.lease_move, name="lease_move"),
    path("volumes/<int:volume_id>/move/cancel/", views_volumes.volume_move_cancel, name="volume_move_cancel"),
    path("volumes/access/", views_data_access.data_access_open, name="data_access_open"),
    path("volumes/access/<int:session_id>/end/", views_data_access.data_access_end, name="data_access_end"),
    path("servers/", views_servers.server_list, name="server_list"),
    path("servers/<int:server_id>/", views_servers.server_detail, name="server_detail"),
    path("servers/<int:server_id>/cards/", views_servers.server_tiles, name="server_tiles"),
    path(
        "servers/<int:server_id>/enrollment-token/",
        views_servers.server_enrollment_token,
        name="server_enrollment_token",
    ),
    path("servers/<int:server_id>/volume-disk/", views_servers.server_volume_disk, name="server_volume_disk"),
    path("servers/<int:server_id>/drain/", views_servers.server_drain, name="server_drain"),
    path("servers/<int:server_id>/undrain/", views_servers.server_undrain, name="server_undrain"),
    path("provider/offers/", views_provider.offer_list, name="provider_offers"),
    path("provider/offers/new/", views_provider.offer_new, name="provider_offer_new"),
    path("provider/offers/<int:offer_id>/edit/", views_provider.offer_edit, name="provider_offer_edit"),
    path("provider/offers/<int:offer_id>/delist/", views_provider.offer_delist, name="provider_offer_delist"),
    path("provider/earnings/", views_provider.earnings, name="provider_earnings"),
    path("broker/", views_broker.broker_book_page, name="broker_book"),
    path("staff/", views_staff.staff_home, name="staff_home"),
    path("staff/catalogue/", views_staff.catalogue, name="staff_catalogue"),
    path("staff/close-period/", views_staff.close_period_page, name="staff_close_period"),
    path("staff/fleet/", views_staff.fleet, name="staff_fleet"),
    path("staff/reconciliation/", billing_views.reconciliation_page, name="staff_reconciliation"),
]
