"""The GPU catalogue: loaded into every database by migration, each figure traceable to a public source."""

from __future__ import annotations

from decimal import Decimal

from inventory.catalogue import FIGURES, catalogue_entries, catalogue_load
from inventory.models import GpuModel

REQUIRED = {
    "h100-sxm5-80gb",
    "h100-pcie-80gb",
    "h200-sxm-141gb",
    "h800-sxm-80gb",
    "h20-96gb",
    "a100-sxm4-80gb",
    "a800-sxm4-80gb",
    "l40s-48gb",
    "l20-48gb",
    "rtx-4090-24gb",
    "b200-180gb",
    "mi300x-192gb",
    "ascend-910b-64gb",
}


def test_the_migration_loads_the_whole_catalogue_into_a_fresh_database(db):
    slugs = set(GpuModel.objects.values_list("slug", flat=True))
    assert len(slugs) >= 12
    assert REQUIRED <= slugs
    assert len(slugs) == len(catalogue_entries())


def test_every_figure_in_the_catalogue_names_a_public_source_url(db):
    for model in GpuModel.objects.all():
        for figure in FIGURES:
            if getattr(model, figure) is None:
                # An unpublished figure stays empty and the notes say why, instead of a guess.
                assert model.sources.get("notes"), f"{model.slug}: {figure} is empty without a note"
                continue
            url = model.sources.get(figure, "")
            assert url.startswith("https://"), f"{model.slug}: {figure} has no source"
        assert model.nvml_names, model.slug
        assert model.fp16_tflops > 0


def test_catalogue_figures_match_the_vendor_datasheets(db):
    figures = {m.slug: (m.fp16_tflops, m.fp32_tflops) for m in GpuModel.objects.all()}
    assert figures["h100-sxm5-80gb"] == (Decimal("989.40"), Decimal("67.00"))
    assert figures["a100-sxm4-80gb"] == (Decimal("312.00"), Decimal("19.50"))
    assert figures["h20-96gb"] == (Decimal("148.00"), Decimal("44.00"))
    assert figures["l40s-48gb"] == (Decimal("362.05"), Decimal("91.60"))
    assert figures["rtx-4090-24gb"][0] == Decimal("165.20")
    assert figures["b200-180gb"][0] == Decimal("2250.00")
    assert figures["mi300x-192gb"][0] == Decimal("1307.40")
    assert "accumulate" in GpuModel.objects.get(slug="rtx-4090-24gb").sources["notes"]
    assert "vendor-published" in GpuModel.objects.get(slug="ascend-910b-64gb").sources["notes"]


def test_nvml_names_are_the_strings_nvml_reports(db):
    def names(slug):
        return GpuModel.objects.get(slug=slug).nvml_names

    assert "NVIDIA H100 80GB HBM3" in names("h100-sxm5-80gb")
    assert "NVIDIA H200" in names("h200-sxm-141gb")
    assert "NVIDIA A100-SXM4-80GB" in names("a100-sxm4-80gb")
    assert "NVIDIA GeForce RTX 4090" in names("rtx-4090-24gb")
    assert "NVIDIA L40S" in names("l40s-48gb")


def test_loading_the_catalogue_again_changes_nothing(db):
    before = list(GpuModel.objects.order_by("pk").values())
    catalogue_load()
    assert list(GpuModel.objects.order_by("pk").values()) == before


def test_loading_the_catalogue_restores_a_figure_edited_by_hand(db):
    GpuModel.objects.filter(slug="a100-sxm4-80gb").update(fp16_tflops="624")
    catalogue_load()
    assert GpuModel.objects.get(slug="a100-sxm4-80gb").fp16_tflops == Decimal("312.00")


def test_anyone_may_read_the_catalogue_with_decimals_as_strings(anon, alice):
    for client in (anon, alice.api):
        response = client.get("/api/v1/gpu-models/")
        assert response.status_code == 200
        body = response.json()
        assert isinstance(body, list) and len(body) >= 12
        h100 = next(m for m in body if m["slug"] == "h100-sxm5-80gb")
        assert h100["fp16_tflops"] == "989.40"
        assert h100["fp32_tflops"] == "67.00"
        assert {"id", "name", "vendor", "memory_gb", "tdp_w", "interconnect", "nvml_names"} <= set(h100)
