"""App config of the inventory."""

from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "inventory"
    verbose_name = "Inventory: GPU catalogue, servers and agents"
