"""Every shipped preset gives its published exact total (values from presets/SOURCES.md, which
come from the HF API / published counts, not from this code), and transformers agrees."""
from __future__ import annotations

import json

import pytest

from sizewise.arch.families import inventory_from_config
from sizewise.arch.presets import find_preset, list_presets
from sizewise.errors import SizewiseError

# preset -> published total (without MTP for DeepSeek-V3/R1: 671,026,419,200)
PUBLISHED = {
    "deepseek-v3": 671_026_419_200,
    "deepseek-r1": 671_026_419_200,
    "deepseek-v2": 235_741_434_880,
    "deepseek-v2-lite": 15_706_484_224,
    "deepseek-moe-16b-base": 16_375_728_128,
    "deepseek-llm-7b-base": 6_910_365_696,
    "deepseek-llm-67b-base": 67_425_001_472,
    "deepseek-coder-1.3b-base": 1_346_471_936,
    "deepseek-coder-6.7b-base": 6_740_512_768,
    "deepseek-coder-33b-base": 33_342_991_360,
    "deepseek-r1-distill-qwen-1.5b": 1_777_088_000,
    "deepseek-r1-distill-qwen-7b": 7_615_616_512,
    "deepseek-r1-distill-qwen-14b": 14_770_033_664,
    "deepseek-r1-distill-qwen-32b": 32_763_876_352,
    "deepseek-r1-distill-llama-8b": 8_030_261_248,
    "deepseek-r1-distill-llama-70b": 70_553_706_496,
    "smollm2-135m": 134_515_008,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.1-405b": 405_853_388_800,
    "qwen2.5-7b": 7_615_616_512,
    "mixtral-8x7b-v0.1": 46_702_792_704,
}


def test_all_required_presets_ship():
    assert {p.name for p in list_presets()} == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_total_equals_published(name):
    p = find_preset(name)
    inv = inventory_from_config(p.config(), p.repo_id)
    assert inv.total_without_mtp == PUBLISHED[name]
    assert inv.arch.model_type == p.config()["model_type"]


@pytest.mark.parametrize("name", sorted(n for n in PUBLISHED if n != "deepseek-moe-16b-base"))
def test_preset_total_equals_transformers_meta_count(name, meta_counts):
    cfg = find_preset(name).config()
    total, groups, _ = meta_counts(cfg)
    inv = inventory_from_config(cfg)
    assert inv.total_without_mtp == total
    assert {g: c.total for g, c in inv.groups().items() if g != "mtp"} == groups


def test_only_v3_family_has_mtp():
    with_mtp = {p.name for p in list_presets() if inventory_from_config(p.config()).mtp}
    assert with_mtp == {"deepseek-v3", "deepseek-r1"}


def test_preset_files_are_valid_json_objects_with_model_type():
    for p in list_presets():
        cfg = json.loads(p.path.read_text())
        assert isinstance(cfg, dict) and cfg["model_type"]
        assert p.repo_id.split("/")[1].lower() == p.name


def test_find_preset_by_name_repo_id_case_and_prefix():
    assert find_preset("DeepSeek-V3").repo_id == "deepseek-ai/DeepSeek-V3"
    assert find_preset("deepseek-ai/deepseek-r1").name == "deepseek-r1"
    assert find_preset("deepseek-llm-67b").name == "deepseek-llm-67b-base"  # unique prefix
    assert find_preset("  smollm2-135m ").repo_id == "HuggingFaceTB/SmolLM2-135M"


def test_unknown_preset_suggests_close_names():
    with pytest.raises(SizewiseError) as e:
        find_preset("deepsek-v3")
    msg = str(e.value)
    assert "deepseek-v3" in msg and "sizewise presets" in msg and "\n" not in msg


def test_ambiguous_prefix_is_an_error_listing_candidates():
    with pytest.raises(SizewiseError) as e:
        find_preset("llama-3.1")
    assert "llama-3.1-8b" in str(e.value)
