"""`sizewise share` bad input: one line, exit 2, nothing written."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sizewise.cli import app


@pytest.mark.parametrize("args,match", [
    (["--group-size", "1"], "group-size"),
    (["--projections", "everything"], "projections"),
    (["--steps", "-3"], "steps"),
])
def test_share_bad_options_exit_2(tmp_path, args, match):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["share", "bundled", "--out", str(out), *args])
    assert r.exit_code == 2
    assert "error:" in r.output and match in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_share_refuses_existing_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = CliRunner().invoke(app, ["share", "bundled", "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    assert (out / "keep.txt").read_text() == "mine"


def test_share_missing_model_exit_2(tmp_path):
    r = CliRunner().invoke(app, ["share", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "error:" in r.output
    assert not (tmp_path / "o").exists()


def test_compress_prune_without_recipe_saves_fp16_sparse(tiny_model_dir, tmp_path):
    """`compress --prune` alone stores the kept values as fp16 and reloads to the same logits."""
    import torch
    from typer.testing import CliRunner

    import sizewise
    from sizewise.cli import app

    out = tmp_path / "pruned"
    r = CliRunner().invoke(app, ["compress", str(tiny_model_dir), "--prune", "magnitude", "--sparsity", "2:4",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    model, _tok, manifest = sizewise.load(out)
    schemes = {m["scheme"] for m in manifest["modules"].values()}
    assert schemes == {"sparse-nm-fp16"}
    w = model.model.layers[0].mlp.down_proj
    dense = w.dequantized_weight() if hasattr(w, "dequantized_weight") else w.weight
    assert (dense.reshape(-1, 4) != 0).sum(-1).max().item() <= 2  # 2:4 structure survived the round trip
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(8)[None]).logits).all()
