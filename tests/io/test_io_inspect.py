"""`sizewise inspect`: header inventory, comparison with the analytic inventory, CLI exit codes."""
from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from sizewise.cli import app
from sizewise.commands.inspect import inspect_report

runner = CliRunner()


def _tiny_llama(tie: bool, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return cfg, LlamaForCausalLM(cfg)


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


def _save(dirpath, cfg, sd) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone() for k, v in sd.items()}, dirpath / "model.safetensors")
    (dirpath / "config.json").write_text(json.dumps(cfg.to_dict()))


def test_cli_inspect_bundled(bundled_path):
    r = runner.invoke(app, ["inspect", "bundled"])
    assert r.exit_code == 0, r.output
    assert "134,515,008" in r.output
    assert "Q4_1" in r.output and "Q8_0" in r.output
    assert "matches the analytic inventory" in r.output

    r = runner.invoke(app, ["inspect", "bundled", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["format"] == "gguf" and rep["parameters"] == 134_515_008
    assert set(rep["by_dtype"]) == {"F32", "Q4_1", "Q8_0"}
    assert rep["by_group"]["embedding"]["params"] == 49152 * 576
    assert "lm_head" not in rep["by_group"]  # tied: the embedding is the head
    assert rep["comparison"]["status"] == "match"
    assert rep["data_bytes"] + rep["header_bytes"] <= rep["file_bytes"] == bundled_path.stat().st_size


def test_cli_corrupted_copy_exits_2_one_line(tmp_path, bundled_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(bundled_path.read_bytes()[:3_000_000])
    r = runner.invoke(app, ["inspect", str(bad)])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.gguf" in lines[0]
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "missing.safetensors")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ")


def test_hf_dir_matches_and_tied_head_counts_once(tmp_path):
    cfg, model = _tiny_llama(tie=True)
    sd = model.state_dict()
    assert "lm_head.weight" in sd  # the state dict carries the tied head; a checkpoint may too
    _save(tmp_path / "m", cfg, sd)
    rep = inspect_report(str(tmp_path / "m"))
    assert rep["parameters"] == _n_params(model)
    assert rep["comparison"]["status"] == "match", rep["comparison"]
    assert any("counted once" in n for n in rep["notes"])
    r = runner.invoke(app, ["inspect", str(tmp_path / "m" / "model.safetensors")])
    assert r.exit_code == 0, r.output


def test_untied_model_has_lm_head_group(tmp_path):
    cfg, model = _tiny_llama(tie=False)
    _save(tmp_path, cfg, model.state_dict())
    rep = inspect_report(str(tmp_path))
    assert rep["parameters"] == _n_params(model)
    assert rep["by_group"]["lm_head"]["params"] == 96 * 32
    assert rep["by_group"]["attention"]["params"] == sum(
        p.numel() for n, p in model.named_parameters() if ".self_attn." in n)
    assert rep["comparison"]["status"] == "match"


def test_mismatch_is_exit_2_listing_differences(tmp_path):
    cfg, model = _tiny_llama(tie=False)
    sd = dict(model.state_dict())
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(3, 3)
    cfg.num_hidden_layers = 3  # the config promises a layer the checkpoint lacks
    _save(tmp_path, cfg, sd)
    rep = inspect_report(str(tmp_path))
    kinds = {(d["kind"], d["name"]) for d in rep["comparison"]["differences"]}
    assert ("only_in_checkpoint", "model.layers.{i}.mlp.extra.weight") in kinds
    assert ("count", "model.layers.{i}.self_attn.q_proj.weight") in kinds
    r = runner.invoke(app, ["inspect", str(tmp_path)])
    assert r.exit_code == 2
    assert "only_in_checkpoint" in r.stdout and "model.layers.{i}.mlp.extra.weight" in r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "does not match its config" in r.stderr


def test_shape_mismatch(tmp_path):
    cfg, model = _tiny_llama(tie=False)
    cfg.intermediate_size = 48
    _save(tmp_path, cfg, model.state_dict())
    rep = inspect_report(str(tmp_path))
    shape = {d["name"]: d for d in rep["comparison"]["differences"] if d["kind"] == "shape"}
    assert shape["model.layers.{i}.mlp.up_proj.weight"]["checkpoint_shape"] == [64, 32]
    assert shape["model.layers.{i}.mlp.up_proj.weight"]["inventory_shape"] == [48, 32]


def test_unsupported_model_type_still_inspects(tmp_path):
    sd = {"transformer.h.0.attn.c_attn.weight": torch.zeros(8, 24), "transformer.wte.weight": torch.zeros(10, 8)}
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    rep = inspect_report(str(tmp_path))
    assert rep["parameters"] == 8 * 24 + 10 * 8
    assert rep["comparison"]["status"] == "skipped" and "gpt2" in rep["comparison"]["reason"]
    r = runner.invoke(app, ["inspect", str(tmp_path)])
    assert r.exit_code == 0 and "comparison with the analytic inventory skipped" in r.stdout


def test_deepseek_v3_fp8_checkpoint(v3_sharded, v3_config):
    """fp8 weights with block scales, MTP layer: scales apart, MTP in its own group, match."""
    rep = inspect_report(str(v3_sharded))
    cmp_ = rep["comparison"]
    assert cmp_["status"] == "match", cmp_["differences"][:5]
    assert rep["parameters"] == cmp_["inventory_total"]
    idx = json.loads((v3_sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert rep["scales"]["tensors"] == sum(n.endswith("weight_scale_inv") for n in idx)
    assert rep["tensors"] == len(idx)
    assert rep["parameters"] - rep["by_group"]["mtp"]["params"] == 671_026_419_200  # SOURCES.md
    assert set(rep["by_dtype"]) == {"BF16", "F32", "F8_E4M3"}
    L = v3_config["num_hidden_layers"]
    assert rep["by_group"]["mtp"]["tensors"] == sum(
        f"layers.{L}." in n and not n.endswith("weight_scale_inv") for n in idx)


def test_packed_int4_checkpoint_counts_unpacked_params(tmp_path):
    """A compressed-tensors pack-quantized checkpoint: int32 words hold 8 int4 values each."""
    cfg, model = _tiny_llama(tie=False)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_packed = 0
    for k in [k for k in sd if k.endswith(("q_proj.weight", "down_proj.weight"))]:
        w = sd.pop(k)
        m = k[: -len(".weight")]
        rows, cols = w.shape
        sd[f"{m}.weight_packed"] = torch.zeros(rows, cols // 8, dtype=torch.int32)
        sd[f"{m}.weight_scale"] = torch.ones(rows, cols // 16, dtype=torch.float16)
        sd[f"{m}.weight_zero_point"] = torch.zeros(rows // 8, cols // 16, dtype=torch.int32)
        sd[f"{m}.weight_shape"] = torch.tensor([rows, cols])
        n_packed += 1
    d = cfg.to_dict()
    d["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 16}}}}
    save_file(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(d))
    rep = inspect_report(str(tmp_path))
    assert rep["parameters"] == _n_params(model)
    assert rep["scales"]["tensors"] == 3 * n_packed
    assert rep["by_dtype"]["I32"]["params"] == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "down_proj.weight")))
    assert rep["by_dtype"]["I32"]["bytes"] * 2 == rep["by_dtype"]["I32"]["params"]  # 4 bits per parameter
    assert rep["comparison"]["status"] == "match", rep["comparison"]["differences"]
