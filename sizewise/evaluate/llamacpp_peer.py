"""`sizewise eval MODEL --peer llamacpp`: llama.cpp on the same weights, beside sizewise, at batch 1.

The peer a user would pick instead for one stream on a CPU is llama.cpp, so `eval` can put it in the
same run: the same weights (a GGUF source as it is; a sizewise checkpoint through `sizewise export --to
gguf`, which carries int8/int4 codes over exactly; a checkpoint GGUF cannot hold exactly is skipped with
the exporter's reason rather than re-quantized behind the user's back), the same protocol windows
(perplexity, and KLD / top-1 of llama.cpp's logits against sizewise's own), and prefill / batch-1
decode timed in interleaved rounds (sizewise, llama.cpp, sizewise, ...) with the same thread count, so
the ratio of each round is taken on the same machine state and the spread across rounds is reported.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from sizewise.errors import SizewiseError

PEERS = ("llamacpp",)


def parse_peers(spec: str | None) -> list[str]:
    """'llamacpp' (comma-separated) -> names; an unknown name is a user error listing the valid ones."""
    if not spec:
        return []
    names = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in PEERS]
    if bad:
        raise SizewiseError(f"unknown --peer {', '.join(bad)}: eval knows {', '.join(PEERS)}")
    return names


def gguf_for(lm, workdir: Path) -> tuple[Path | None, str]:
    """The GGUF file holding `lm`'s weights, and how it was obtained (or None and why not)."""
    if lm.kind == "gguf":
        return Path(lm.source), "the source file itself"
    if lm.kind != "sizewise":
        return None, f"{lm.source} is a {lm.kind} directory: export it with `sizewise export --to gguf` first"
    from sizewise.export import gguf as G

    out = workdir / "peer.gguf"
    try:
        rep = G.export(str(lm.source), out, measure_tokens=0)
    except SizewiseError as e:
        return None, f"not exported to GGUF exactly: {e}"
    return out, f"`sizewise export --to gguf` ({', '.join(f'{n} {t}' for t, n in sorted(rep['types'].items()))})"


def llamacpp_beside(lm, toks: Sequence[int], window: int, threads: int, speed: bool = True, runs: int = 3,
                    steps: int = 32, prefill: int = 512, prompt: int = 64) -> dict:
    """llama.cpp's numbers for `lm`'s weights beside sizewise's: {"skipped": why} when it cannot run."""
    from sizewise.evaluate import data, metrics
    from sizewise.evaluate.speed import batch1_pass, spread
    from sizewise.export import llamacpp as L

    why = L.available()
    if why:
        return {"skipped": why}
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="sizewise-eval-peer-") as tmp:
        path, how = gguf_for(lm, Path(tmp))
        if path is None:
            return {"skipped": how}
        out: dict = {"peer": "llama.cpp", "version": llama_cpp.__version__, "gguf": how, "threads": threads}
        ws = data.windows(list(toks), window)
        llm = L.open_model(path, n_ctx=max(window, prefill, prompt + steps + 1), threads=threads)
        q = L.compare(llm, ws, reference_logits=(lg.numpy() for lg in metrics.iter_window_logits(lm.model, toks, window)))
        out["quality"] = {"ppl_llamacpp": q["ppl"], "kld_sizewise_vs_llamacpp": q.get("kld"),
                          "top1_sizewise_vs_llamacpp": q.get("top1"), "n_predicted": q.get("predicted")}
        if speed:
            need = max(prefill, prompt)
            ids = list(toks) if len(toks) >= need else data.eval_tokens(lm.tokenizer, need)
            pre_ids, prompt_ids = ids[:prefill], ids[:prompt]
            rounds: dict[str, list[float]] = {k: [] for k in ("sw_prefill", "sw_decode", "lc_prefill", "lc_decode")}
            for r in range(runs + 1):  # round 0 warms both up and is dropped
                sp_, sd = batch1_pass(lm.model, pre_ids, prompt_ids, steps)
                lp, ld = L.speed_pass(llm, pre_ids, prompt_ids, steps)
                if r:
                    for k, v in zip(rounds, (sp_, sd, lp, ld)):
                        rounds[k].append(v)
            ratio_d = [a / b for a, b in zip(rounds["sw_decode"], rounds["lc_decode"])]
            ratio_p = [a / b for a, b in zip(rounds["sw_prefill"], rounds["lc_prefill"])]
            out["speed"] = {"prefill_tokens": prefill, "decode_steps": steps, "decode_prompt": prompt, "rounds": runs,
                            "sizewise_prefill_tok_s": spread(rounds["sw_prefill"]),
                            "sizewise_decode_b1_tok_s": spread(rounds["sw_decode"]),
                            "llamacpp_prefill_tok_s": spread(rounds["lc_prefill"]),
                            "llamacpp_decode_b1_tok_s": spread(rounds["lc_decode"]),
                            "decode_ratio": spread(ratio_d), "prefill_ratio": spread(ratio_p)}
        del llm
    return out
