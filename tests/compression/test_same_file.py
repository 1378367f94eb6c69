"""One recipe, one source -> one file: `sizewise compress` (streamed and in memory), the Python API
(`sizewise.compress` + `sizewise.save`) and the study's path (`study.variant_model` + save) write the
same tensors (names, dtypes, shapes, bytes) for every saveable recipe.

The bug this guards: an fp32 parent compressed with int8-dyn through the CLI kept its token table and
norms in fp32 (bundled model: 219,920,712 bytes) while the study, which cast them to bf16 before saving,
wrote 163.2 MB."""
from __future__ import annotations

import pytest
import torch

from sizewise.compression.recipes import RECIPES

from comp_helpers import char_tokenizer, tiny_llama

CALIB_SEQS = 2  # calibration sequences for every path (--calib-tokens on the CLI): the layout does not depend on it
SAVEABLE = [r for r in RECIPES if r != "torch-dynamic"]  # the baseline row has no checkpoint format


def _layout(d) -> dict[str, tuple[str, tuple[int, ...]]]:
    from sizewise.compression.checkpoint import read_tensors
    return {k: (str(t.dtype), tuple(t.shape)) for k, t in read_tensors(d).items()}


def _bytes(d) -> int:
    from sizewise.io.safetensors_scan import scan_safetensors
    return scan_safetensors(d).data_bytes


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than a team (and much faster on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fp32_src(tmp_path_factory):
    """An fp32 HF directory (an fp32 parent, like the dequantized bundled GGUF), tied table."""
    d = tmp_path_factory.mktemp("fp32src")
    tiny_llama(seed=5, hidden=64, inter=128, tied=True).save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    """A short calibration text (the CLI's --calib-file), so no path tokenizes the whole corpus."""
    f = tmp_path_factory.mktemp("calib") / "calib.txt"
    f.write_text(" ".join(f"line {i}: the quick brown fox jumps over the lazy dog." for i in range(40)))
    return f


def _calib(cfg, calib_file):
    """The tokens the CLI takes from --calib-file with --calib-tokens, for the API and study paths."""
    from sizewise.evaluate.data import corpus_text
    seq = getattr(cfg, "calib_seq_len", 256)
    ids = char_tokenizer()(corpus_text([str(calib_file)]), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:CALIB_SEQS * seq], dtype=torch.long).view(CALIB_SEQS, seq)


@pytest.mark.parametrize("recipe", SAVEABLE)
def test_cli_api_and_study_write_the_same_file(recipe, fp32_src, calib_file, tmp_path, capsys):
    import sizewise
    from sizewise.commands.compress import compress_command
    from sizewise.compression.checkpoint import save_compressed
    from sizewise.study import variant_model
    from transformers import AutoModelForCausalLM

    cfg = RECIPES[recipe]
    calib = _calib(cfg, calib_file) if cfg.needs_calibration else None
    parent = AutoModelForCausalLM.from_pretrained(fp32_src, dtype=torch.float32).eval()

    n_calib = CALIB_SEQS * getattr(cfg, "calib_seq_len", 256) if cfg.needs_calibration else None
    cf = str(calib_file) if cfg.needs_calibration else None
    compress_command(str(fp32_src), recipe, str(tmp_path / "cli"), json_out=True, calib_file=cf,
                     calib_tokens=n_calib)  # streams where it can
    compress_command(str(fp32_src), recipe, str(tmp_path / "cli-mem"), stream=False, json_out=True, calib_file=cf,
                     calib_tokens=n_calib)
    from sizewise.api import save
    api = sizewise.compress(__import__("copy").deepcopy(parent), recipe, calib_tokens=calib)
    save(api, char_tokenizer(), tmp_path / "api", parent=fp32_src)
    study_model, _ = variant_model(parent, cfg, calib)
    save_compressed(study_model, char_tokenizer(), tmp_path / "study", None, str(fp32_src))
    capsys.readouterr()

    ref = _layout(tmp_path / "study")
    for path in ("cli", "cli-mem", "api"):
        assert _layout(tmp_path / path) == ref, f"{recipe}: {path} differs from the study's file"
        assert _bytes(tmp_path / path) == _bytes(tmp_path / "study"), path
    # and what is kept in float is stored in the dtype the recipe computes in, never the parent's fp32 by accident
    emb = ref["model.embed_tokens.weight"][0] if "model.embed_tokens.weight" in ref else None
    if recipe in ("int8-dyn", "int8-dyn-nosq", "int8-static"):
        assert emb == "torch.bfloat16" and ref["model.norm.weight"][0] == "torch.bfloat16"
