"""The GPU catalogue that ships with the code: `inventory/fixtures/gpu_models.json`.

A data migration loads it into every database; `catalogue_load` is idempotent (keyed on `slug`), so it can
be rerun after the fixture changes to bring the figures up to date without touching servers that use them.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.db import models, transaction

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gpu_models.json"
# The rated figures each catalogue entry carries; each one that is set needs a source URL.
FIGURES = ("memory_gb", "fp16_tflops", "fp32_tflops", "tdp_w", "interconnect_gbps")


def catalogue_entries(path: Path = FIXTURE) -> list[dict[str, Any]]:
    """The fixture's entries as field dicts (decimals as `Decimal`)."""
    rows = json.loads(path.read_text(encoding="utf-8"))
    entries = []
    for row in rows:
        fields = dict(row["fields"])
        for name in ("fp16_tflops", "fp32_tflops"):
            if fields.get(name) is not None:
                fields[name] = Decimal(str(fields[name]))
        entries.append(fields)
    return entries


def catalogue_load(*, model: type[models.Model] | None = None, path: Path = FIXTURE) -> int:
    """Create or update every catalogue entry by slug; returns how many entries the fixture has.

    Idempotent: a rerun with an unchanged fixture writes the same values. `model` is the migration's
    historical GpuModel when called from a migration.
    """
    if model is None:
        from inventory.models import GpuModel

        model = GpuModel
    entries = catalogue_entries(path)
    with transaction.atomic():
        for fields in entries:
            slug = fields.pop("slug")
            model._default_manager.update_or_create(slug=slug, defaults=fields)
    return len(entries)
