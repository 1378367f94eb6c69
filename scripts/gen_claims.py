"""Check commonly quoted model-size figures with sizewise's estimator and write docs/claims.md.

Every number in the document is computed here from the shipped presets; nothing is typed in
except the claims themselves. Run: .venv/bin/python scripts/gen_claims.py [--check]
(--check exits 1 when docs/claims.md is out of date, without writing).
"""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sizewise.arch.families import inventory_from_config  # noqa: E402
from sizewise.arch.inventory import ParamInventory  # noqa: E402
from sizewise.arch.presets import find_preset, list_presets  # noqa: E402
from sizewise.size.formats import size_in_format  # noqa: E402
from sizewise.size.training import training_memory  # noqa: E402
from sizewise.units import GB, GiB, TB  # noqa: E402

OUT = ROOT / "docs" / "claims.md"
TOLERANCE = 0.01  # a quoted figure within 1 % of the computed one counts as right (3-digit rounding)


def inv_of(name: str) -> ParamInventory:
    p = find_preset(name)
    return inventory_from_config(p.config(), p.repo_id)


def gb(n: float) -> str:
    return f"{n / GB:,.2f} GB ({n / GiB:,.2f} GiB)"


def tb(n: float) -> str:
    return f"{n / TB:,.3f} TB ({n / 2**40:,.3f} TiB)"


def close(quoted: float, value: float) -> bool:
    return abs(quoted - value) <= TOLERANCE * value


def unit_reading(quoted_gb: float, n_bytes: int) -> str:
    """Which unit, if any, makes the quoted figure right."""
    if close(quoted_gb * GB, n_bytes):
        return "right in GB"
    if close(quoted_gb * GiB, n_bytes):
        return "right only if read as GiB, though labelled GB"
    return f"it takes {gb(n_bytes)}, so {quoted_gb:g} fits neither unit"


def presets_matching(quoted_bytes: float, fn) -> list[str]:
    """Shipped presets whose computed figure matches the quoted one (to find what was measured)."""
    out = []
    for p in list_presets():
        inv = inventory_from_config(p.config(), p.repo_id)
        if close(quoted_bytes, fn(inv)):
            out.append(f"{p.repo_id} ({inv.total:,} params)")
    return out


def dynamic_int8_bytes(inv: ParamInventory) -> int:
    """torch.ao.quantization.quantize_dynamic on an fp32 model: every nn.Linear (lm_head included)
    becomes int8 (per-row scale bytes counted as sizewise's int8 format does); embeddings and
    norms stay fp32."""
    keep = ("embedding", "norm", "bias", "router", "buffer")
    s = size_in_format(inv, "int8", keep_kinds=keep)
    return s.bytes + 2 * s.kept_params  # kept tensors in fp32 rather than bf16


@dataclass
class Claim:
    quote: str
    verdict: str
    right: list[str]
    wrong: list[str]
    correct: list[str]


def claims() -> list[Claim]:
    out: list[Claim] = []
    l8 = inv_of("llama-3.1-8b")
    q7 = inv_of("deepseek-r1-distill-qwen-7b")
    fp32_8b = size_in_format(l8, "fp32").bytes
    fp16_8b = size_in_format(l8, "fp16").bytes
    int8_8b = size_in_format(l8, "int8").bytes
    fp32_q7 = size_in_format(q7, "fp32").bytes

    def fp32(i):
        return size_in_format(i, "fp32").bytes

    def fp16(i):
        return size_in_format(i, "fp16").bytes

    m = presets_matching(30.5 * GB, fp32)
    out.append(Claim(
        "An 8B model in FP32 is 30.5 GB.",
        f"wrong for an 8B model: {unit_reading(30.5, fp32_8b)}"
        + ("; right, in GB, for a 7.6B model such as DeepSeek-R1-Distill-Qwen-7B" if close(30.5 * GB, fp32_q7) else ""),
        ["FP32 is 4 bytes per parameter, and nothing else needs to be counted: every tensor, "
         "including embeddings and norms, is stored in fp32."],
        [f"Llama-3.1-8B (and DeepSeek-R1-Distill-Llama-8B) has {l8.total:,} parameters: x 4 B = "
         f"{gb(fp32_8b)}. 30.5 GB is {100 * (1 - 30.5 * GB / fp32_8b):.1f} % short of that.",
         f"8e9 x 4 B = {gb(8e9 * 4)}: even rounding the count to 8e9 does not give 30.5 in either unit.",
         "30.5 GB is what a 7.6B model takes: it matches " + (", ".join(m) if m else "no shipped preset") +
         f" ({gb(fp32_q7)}). The figure was computed for a Qwen2-7B-sized model, not an 8B one."],
        [f"8B (Llama-3.1-8B): {gb(fp32_8b)}; 7.6B (R1-Distill-Qwen-7B): {gb(fp32_q7)}."],
    ))

    out.append(Claim(
        "FP16 halves it to 15.2 GB.",
        f"halving is right; 15.2 GB is wrong for an 8B model: {unit_reading(15.2, fp16_8b)}",
        [f"FP16 stores every tensor in 2 bytes, so it is exactly half of FP32: {gb(fp16_8b)} vs {gb(fp32_8b)}."],
        [f"15.2 GB inherits the 7.6B parameter count: it matches "
         f"{', '.join(presets_matching(15.2 * GB, fp16)) or 'no shipped preset'}."],
        [f"8B (Llama-3.1-8B): {gb(fp16_8b)}; 7.6B: {gb(size_in_format(q7, 'fp16').bytes)}."],
    ))

    dyn = dynamic_int8_bytes(l8)
    emb = sum(t.total for t in l8.tensors if t.kind == "embedding")
    out.append(Claim(
        "Dynamic INT8 makes it 7.6 GB.",
        f"wrong: an 8B model with dynamic INT8 is {gb(dyn)}; 7.6 GB is 7.6e9 parameters x 1 byte, "
        "the 7.6B model again",
        ["INT8 stores quantized weights in 1 byte each, so the Linear layers shrink 4x from FP32."],
        [f"Dynamic quantization (torch quantize_dynamic) converts only nn.Linear: the "
         f"{emb:,}-parameter embedding stays in fp32 ({gb(4 * emb)}), so the model cannot reach 1 byte/param.",
         f"An 8B model has {l8.total:,} parameters: even all of them at 1 byte is {gb(l8.total)}.",
         "Every row also carries a scale (sizewise counts 2 B per output row).",
         f"Even the 7.6B model the other figures fit is {gb(dynamic_int8_bytes(q7))} with dynamic INT8."],
        [f"Llama-3.1-8B with dynamic INT8 (Linear + lm_head int8, embeddings and norms fp32): {gb(dyn)}.",
         f"Weight-only INT8 with embeddings and head kept in bf16 (sizewise `int8`): {gb(int8_8b)}."],
    ))

    l67 = inv_of("deepseek-llm-67b")
    t16 = training_memory(l67, "adamw", zero=0, gpus=1, recompute="full", seq=4096, micro_batch=1)
    states = t16.weights + t16.grads + t16.optimizer_states
    t_none = training_memory(l67, "adamw", zero=0, gpus=1, recompute="none", seq=4096, micro_batch=1)
    pure16 = 8 * l67.total  # fp16 weights, grads, Adam m and v: no fp32 master copy
    out.append(Claim(
        "A 67B model needs at least 1.3 TB of GPU memory to train in FP16.",
        "wrong as a lower bound: the floor with mixed-precision Adam is " + tb(states),
        [f"Training memory is dominated by model states, and for DeepSeek-LLM-67B ({l67.total:,} params) "
         f"these alone pass 1 TB: {tb(states)}."],
        ["'At least 1.3 TB' is not a floor: mixed-precision AdamW needs 16 B/param "
         f"(2 bf16 weights + 2 grads + 12 fp32 master/m/v) = {tb(states)}, before activations.",
         f"1.3 TB is {1.3 * TB / l67.total:.1f} B/param, which matches none of these recipes; a guide that "
         f"adds an fp32 copy of the gradients (20 B/param) would get {tb(20 * l67.total)}.",
         f"Pure-FP16 training (fp16 weights, grads and Adam m/v, no fp32 master) would be 8 B/param = {tb(pure16)}.",
         "The figure also omits activations, which depend on sequence length and recompute: at seq 4096, "
         f"micro-batch 1, full recompute adds {gb(t16.activations)}; with no recompute "
         f"(Korthikanti et al. 2022) {gb(t_none.activations)}."],
        [f"Model states {tb(states)}; with full recompute at seq 4096, micro-batch 1: {tb(t16.per_gpu_bytes)} "
         f"in total; with no recompute: {tb(t_none.per_gpu_bytes)}. Sharded with ZeRO-3 over 16 GPUs: "
         f"{gb(training_memory(l67, zero=3, gpus=16, recompute='full').per_gpu_bytes)} per GPU."],
    ))

    fp32_67 = size_in_format(l67, "fp32").bytes
    int8_67 = size_in_format(l67, "int8").bytes
    m530 = 530 * GB / l67.total
    out.append(Claim(
        "A 67B model is 530 GB in FP32 and 132 GB in INT8.",
        "wrong, by about a factor of two in both figures",
        [f"INT8 is about a quarter of FP32, and the two quoted figures keep that ratio ({530 / 132:.2f}:1)."],
        [f"DeepSeek-LLM-67B has {l67.total:,} parameters: FP32 is {gb(fp32_67)}, not 530 GB "
         f"(530 GB is {m530:.2f} B/param, nearer float64's 8 B ({gb(8 * l67.total)}) than float32's 4 B).",
         f"132 GB is {132 * GB / l67.total:.2f} B/param, i.e. the BF16/FP16 size ({gb(size_in_format(l67, 'bf16').bytes)}), "
         "not INT8."],
        [f"FP32 {gb(fp32_67)}; INT8 weight-only with embeddings and head in bf16 (sizewise `int8`): {gb(int8_67)}; "
         f"BF16 {gb(size_in_format(l67, 'bf16').bytes)}."],
    ))
    return out


def render() -> str:
    lines = [
        "# Common model-size claims, checked",
        "",
        "<!-- generated by scripts/gen_claims.py from sizewise's estimator; do not edit by hand -->",
        "",
        "Units: GB = 10^9 bytes, GiB = 2^30 bytes; TB = 10^12, TiB = 2^40. Parameter counts are the "
        "exact totals of the shipped presets (sizewise/arch/presets, sources in SOURCES.md). "
        f"A quoted figure within {TOLERANCE:.0%} of the computed one counts as right.",
        "",
    ]
    for i, c in enumerate(claims(), 1):
        lines += [f"## {i}. \"{c.quote}\"", "", f"**Verdict:** {c.verdict}.", "", "What is right:", ""]
        lines += [f"- {x}" for x in c.right]
        lines += ["", "What is wrong:", ""]
        lines += [f"- {x}" for x in c.wrong]
        lines += ["", "Correct figure:", ""]
        lines += [f"- {x}" for x in c.correct]
        lines.append("")
    return "\n".join(lines)


def write(path: Path = OUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".claims.", suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        ok = OUT.is_file() and OUT.read_text(encoding="utf-8") == render()
        print("docs/claims.md is up to date" if ok else "docs/claims.md is out of date: run scripts/gen_claims.py")
        return 0 if ok else 1
    write()
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
