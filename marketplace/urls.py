from django.urls import path

from marketplace import views, views_servers

app_name = "marketplace"

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("servers/", views_servers.server_list, name="server_list"),
    path("servers/<int:server_id>/", views_servers.server_detail, name="server_detail"),
    path("servers/<int:server_id>/cards/", views_servers.server_tiles, name="server_tiles"),
    path(
        "servers/<int:server_id>/enrollment-token/",
        views_servers.server_enrollment_token,
        name="server_enrollment_token",
    ),
    path("servers/<int:server_id>/drain/", views_servers.server_drain, name="server_drain"),
    path("servers/<int:server_id>/undrain/", views_servers.server_undrain, name="server_undrain"),
]
