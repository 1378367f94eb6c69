"""Export: a sizewise (or HF, or GGUF) checkpoint written in the format of the engine that will run it.

One module per target, each with the same entry point so `sizewise export` only dispatches:

    export(src: str, out: Path, *, type_: str | None, allow_requantize: bool, force: bool,
           measure_tokens: int) -> dict

The report dict every target returns (and writes into the output's own metadata):
    target, out, bytes, source {path, kind}, exact [tensor names or groups carried over bit for bit],
    requantized [{name, from, to}], kld_vs_src (measured on the protocol text, None when nothing was
    re-quantized and the target loads the same values), notes [str].
Each module also exposes TYPES: the --type values it accepts (empty: none).
"""
from __future__ import annotations

TARGETS = {"gguf": "sizewise.export.gguf", "vllm": "sizewise.export.compressed_tensors",
           "onnx": "sizewise.export.onnx"}
