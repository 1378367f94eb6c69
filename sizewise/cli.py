"""The `sizewise` command: one thin function per verb. Logic lives in the modules named here."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import typer

from sizewise.compression.recipes import RECIPES
from sizewise.errors import SizewiseError

RECIPE_NAMES = list(RECIPES)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Exact parameter counts, sizes and memory for LLMs; measured compression.")


def user_errors(fn: Callable) -> Callable:
    """Bad input prints one line and exits 2: no traceback for a user's mistake."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SizewiseError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
        except FileNotFoundError as e:
            typer.echo(f"error: file not found: {e.filename or e}", err=True)
            raise typer.Exit(2)

    return wrapper


def _no_record():
    return typer.Option(False, "--no-record", help="Do not record this run in the model registry.")


def _registry_opt():
    return typer.Option(None, "--registry", help="Registry file (default: $SIZEWISE_REGISTRY or ~/.local/share/sizewise/registry.sqlite).")


def _mlflow_opt():
    return typer.Option(None, "--mlflow", help="Also log this run to MLflow at this tracking URI (e.g. sqlite:///mlflow.db); needs sizewise[mlflow].")


def _check_mlflow(uri: Optional[str]) -> None:
    """Before the verb's work: a missing mlflow is one error line, not a warning after an hour of compress."""
    if uri:
        from sizewise.registry.mlflow_log import require_mlflow
        require_mlflow()


def _record(verb: str, build: Callable[[], list], no_record: bool, registry: Optional[str],
            mlflow_uri: Optional[str] = None) -> None:
    """Hand a finished verb's result to the registry (and MLflow); a failure there is one warning line, never an exit."""
    from sizewise.registry.results import record_result
    built: list = []

    def once() -> list:
        if not built:
            built.append(build())
        return built[0]

    record_result(verb, once, enabled=not no_record, registry=registry)
    if mlflow_uri:
        from sizewise.registry.mlflow_log import log_result
        log_result(verb, once, mlflow_uri)


# --- presets / estimate / inspect / plan (foundation) ---

@app.command()
@user_errors
def presets(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the shipped model presets with their exact totals."""
    from sizewise.commands.estimate import presets_command
    presets_command(json_out=json_out)


@app.command()
@user_errors
def estimate(
    model: str = typer.Argument(..., help="Preset name, config.json, model directory, .gguf file, or 'bundled'."),
    context: int = typer.Option(4096, "--context", help="Tokens of context per sequence for the KV cache."),
    batch: int = typer.Option(1, "--batch", help="Concurrent sequences."),
    weights: str = typer.Option("bf16", "--weights", help="Storage format the weights are served in."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="KV cache dtype: fp32, bf16, fp16, fp8, int8, int4."),
    train: bool = typer.Option(False, "--train", help="Also estimate training memory."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | adamw-8bit | sgd"),
    zero: int = typer.Option(0, "--zero", help="DeepSpeed ZeRO stage 0-3."),
    gpus: int = typer.Option(1, "--gpus", help="Data-parallel GPUs that ZeRO shards over."),
    recompute: str = typer.Option("none", "--recompute", help="none | selective | full"),
    seq: int = typer.Option(4096, "--seq", help="Training sequence length."),
    micro_batch: int = typer.Option(1, "--micro-batch", help="Training micro-batch per GPU."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (schema: docs/estimate-schema.md)."),
) -> None:
    """Parameters (total, activated), size in every format, inference and training memory."""
    from sizewise.commands.estimate import estimate_command
    estimate_command(model=model, context=context, batch=batch, weights=weights, kv_dtype=kv_dtype,
                     train=train, optimizer=optimizer, zero=zero, gpus=gpus, recompute=recompute,
                     seq=seq, micro_batch=micro_batch, json_out=json_out)


@app.command()
@user_errors
def inspect(
    path: str = typer.Argument(..., help="safetensors file, sharded directory/index, .gguf file, or 'bundled'."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Read tensor headers only (no weights): counts by dtype and group, bytes, check against config."""
    from sizewise.commands.inspect import inspect_command
    inspect_command(path=path, json_out=json_out)


@app.command()
@user_errors
def plan(
    model: str = typer.Argument(..., help="Preset name, config.json, model directory or .gguf file."),
    hardware: str = typer.Option(..., "--hardware", help="Accelerator name or alias (see `sizewise hardware`) or 'cpu'."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    nodes: int = typer.Option(1, "--nodes"),
    context: int = typer.Option(4096, "--context"),
    batch: int = typer.Option(1, "--batch"),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weight format; default: the model's own."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype"),
    train: bool = typer.Option(False, "--train", help="Plan training instead of serving."),
    zero: int = typer.Option(3, "--zero"),
    seq: int = typer.Option(4096, "--seq"),
    micro_batch: int = typer.Option(1, "--micro-batch"),
    top: int = typer.Option(5, "--top", help="How many layouts to show."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Does it fit, how to shard it (TP/PP/DP/EP), and the engine launch command."""
    from sizewise.commands.plan import plan_command
    plan_command(model=model, hardware=hardware, gpus_per_node=gpus_per_node, nodes=nodes,
                 context=context, batch=batch, weights=weights, kv_dtype=kv_dtype, train=train,
                 zero=zero, seq=seq, micro_batch=micro_batch, top=top, json_out=json_out)


@app.command("hardware")
@user_errors
def hardware_list(json_out: bool = typer.Option(False, "--json")) -> None:
    """List the hardware catalog with sources."""
    from sizewise.commands.plan import hardware_command
    hardware_command(json_out=json_out)


# --- compress / eval / study (compression core) ---

@app.command()
@user_errors
def compress(
    model: str = typer.Argument(..., help="HF directory, .gguf file, or 'bundled'."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Required unless --prune (then default fp16 values): "
                               + " ".join(RECIPE_NAMES) + " (int4-ct-*: compressed-tensors int zero points; *-s6: 6-bit coded "
                               "scales, 4.46 bits/weight; *-emb8: int8 token table), or a .json/.yaml file."),
    out: str = typer.Option(..., "--out", help="Output directory (refused if it exists, unless --force)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out directory."),
    calib_file: Optional[str] = typer.Option(None, "--calib-file", help="Calibration text (default: corpus after token 16384)."),
    calib_tokens: Optional[int] = typer.Option(None, "--calib-tokens", help="Calibration tokens (recipe default otherwise)."),
    stream: Optional[bool] = typer.Option(None, "--stream/--no-stream", help="Tensor by tensor (GPTQ: layer by layer); default: on for HF safetensors dirs."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    prune: Optional[str] = typer.Option(None, "--prune", help="magnitude | wanda | sparsegpt"),
    sparsity: Optional[str] = typer.Option(None, "--sparsity", help="0.5 | 2:4 | 4:8"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="oneshot | progressive"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Recovery steps (progressive pruning)."),
    train_file: Optional[str] = typer.Option(None, "--train-file", help="Text for pruning recovery."),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
    mlflow: Optional[str] = _mlflow_opt(),
) -> None:
    """Quantize (and optionally prune) a model into a self-contained checkpoint directory."""
    _check_mlflow(mlflow)
    from sizewise.commands.compress import compress_command
    from sizewise.registry.results import compress_records
    summary = compress_command(model=model, recipe=recipe, out=out, force=force, calib_file=calib_file,
                     calib_tokens=calib_tokens, stream=stream, json_out=json_out,
                     prune_opts={"prune": prune, "sparsity": sparsity, "schedule": schedule, "steps": steps,
                                 "train_file": train_file})
    _record("prune" if prune else "compress", lambda: compress_records(summary, model, bool(prune)), no_record, registry, mlflow)


@app.command("eval")
@user_errors
def eval_(
    model: str = typer.Argument(..., help="'bundled', a .gguf file, an HF or sizewise-compressed directory."),
    against: Optional[str] = typer.Option(None, "--against", help="Parent model: adds KL divergence and top-1 agreement."),
    text: Optional[list[str]] = typer.Option(None, "--text", help="Evaluation text file(s) instead of pydoc_data.topics."),
    tokens: int = typer.Option(8192, "--tokens", help="Evaluate the first N tokens."),
    window: int = typer.Option(512, "--window", help="Non-overlapping window length; each scored on its own."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip prefill/decode timing."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (as stored; GGUF: fp32) | fp32 | bf16 | fp16"),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the JSON result to this file."),
    peer: Optional[str] = typer.Option(None, "--peer", help="llamacpp: the same weights in llama.cpp beside "
                                       "sizewise (perplexity, KLD, prefill and batch-1 decode, interleaved)."),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
    mlflow: Optional[str] = _mlflow_opt(),
) -> None:
    """Perplexity, KLD and top-1 vs a parent, size, load time, prefill/decode speed, peak RSS, kernels."""
    _check_mlflow(mlflow)
    from sizewise.commands.eval import eval_command
    from sizewise.registry.results import eval_records
    r = eval_command(model=model, against=against, text=text, tokens=tokens, window=window, no_speed=no_speed,
                 json_out=json_out, out=out, dtype=dtype, peer=peer)
    corpus = ("files: " + ", ".join(text)) if text else None
    _record("eval", lambda: eval_records({**r, "corpus": corpus}), no_record, registry, mlflow)


@app.command()
@user_errors
def study(
    model: str = typer.Argument(..., help="'bundled', a .gguf file or an HF directory (the fp32 parent)."),
    quick: bool = typer.Option(False, "--quick", help="A 5-recipe subset on 4096 tokens (a few minutes)."),
    recipes: Optional[str] = typer.Option(None, "--recipes", help="Comma-separated recipe names (fp32 is always added)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output directory (default: study-<model>/)."),
    text: Optional[list[str]] = typer.Option(None, "--text", help="Evaluation text file(s) instead of pydoc_data.topics."),
    tokens: Optional[int] = typer.Option(None, "--tokens", help="Evaluation tokens (default 8192; --quick 4096)."),
    keep: bool = typer.Option(False, "--keep", help="Keep every variant's checkpoint under OUT/variants/."),
    json_out: bool = typer.Option(False, "--json", help="Print study.json to stdout."),
    sparsity: bool = typer.Option(False, "--sparsity", help="Also run the pruning grid (sparsity.json/md/png)."),
    peers: bool = typer.Option(False, "--peers", help="Add llama.cpp's own quantizer on the same parent (Q4_0, "
                               "Q4_K_M, Q5_K_M, Q8_0) as rows: bits/weight as stored, same windows and parent."),
    peer_types: Optional[str] = typer.Option(None, "--peer-types", help="llama.cpp types for --peers, "
                                             "comma-separated (default Q4_0,Q4_K_M,Q5_K_M,Q8_0)."),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
    mlflow: Optional[str] = _mlflow_opt(),
) -> None:
    """Run a recipe grid: size, compression, speedups, ppl, KLD, top-1 -> study.json, study.md, plots."""
    _check_mlflow(mlflow)
    from sizewise.commands.study import study_command
    from sizewise.registry.results import study_records
    st = study_command(model=model, quick=quick, recipes=recipes, out=out, text=text, tokens=tokens, keep=keep,
                  json_out=json_out, sparsity=sparsity, peers=peers, peer_types=peer_types)

    def _study_out() -> str:
        from sizewise.study import default_out_dir
        return out or str(default_out_dir(model))

    _record("study", lambda: study_records(st, model, _study_out(), keep), no_record, registry, mlflow)


# --- compare / report (registry) ---

@app.command()
@user_errors
def compare(
    models: list[str] = typer.Argument(..., help="Two or more models as `eval` takes them; the first is the reference."),
    parent: Optional[str] = typer.Option(None, "--parent", help="Common parent for KLD/top-1 (default: the first model)."),
    text: Optional[list[str]] = typer.Option(None, "--text", help="Evaluation text file(s) instead of pydoc_data.topics."),
    tokens: int = typer.Option(4096, "--tokens", help="Score the first N tokens (the same for every model)."),
    window: int = typer.Option(512, "--window", help="Non-overlapping window length; each scored on its own."),
    block: int = typer.Option(32, "--block", help="Tokens per bootstrap block (neighbouring tokens are correlated)."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Quality only: skip the interleaved timing."),
    batches: str = typer.Option("1", "--batches", help="Decode batch sizes to time, comma-separated."),
    decode_steps: int = typer.Option(16, "--decode-steps", help="Greedy tokens per timed decode run."),
    prefill_tokens: int = typer.Option(512, "--prefill-tokens", help="Prompt length of the timed prefill."),
    rounds: int = typer.Option(4, "--rounds", help="Least interleaved timing rounds (after one warm-up)."),
    max_rounds: int = typer.Option(10, "--max-rounds", help="Most rounds, spent only while an interval is wider than ±4 %."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | fp32 | bf16 | fp16 (the parent is always fp32)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    out: Optional[str] = typer.Option(None, "--out", help="Also write the JSON result to this file."),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """Paired quality (NLL difference with a block-bootstrap CI, KLD, top-1) and interleaved speed."""
    from sizewise.commands.compare import compare_command
    from sizewise.registry.results import compare_records
    r = compare_command(models=models, parent=parent, text=text, tokens=tokens, window=window, block=block,
                        no_speed=no_speed, batches=batches, decode_steps=decode_steps, prefill_tokens=prefill_tokens,
                        rounds=rounds, max_rounds=max_rounds, json_out=json_out, out=out, dtype=dtype)
    _record("compare", lambda: compare_records(r, out), no_record, registry)


@app.command()
@user_errors
def report(
    src: str = typer.Argument(..., help="A study directory (study.json), a compare result JSON, or a registry "
                              "model ID / prefix / tag (its latest recorded compare or study)."),
    out: str = typer.Option("report.html", "--out", help="The HTML file to write (self-contained)."),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """One self-contained HTML page: tables, claimed vs measured, Pareto plots, lineage, machine."""
    from sizewise.commands.report import report_command
    report_command(src=src, out=out, registry=registry)


# --- prune / share (sparsity) ---

@app.command()
@user_errors
def share(
    model: str = typer.Argument(..., help="Model directory, .gguf file, or 'bundled'."),
    out: str = typer.Option(..., "--out", help="Output directory (written atomically)."),
    group_size: int = typer.Option(2, "--group-size", help="Adjacent layers per sharing group."),
    projections: str = typer.Option("mlp", "--projections", help="mlp | attn | all: which projections share."),
    steps: int = typer.Option(0, "--steps", help="Fine-tuning steps for the shared bases (masks fixed)."),
    train_file: Optional[str] = typer.Option(None, "--train-file", help="Text to fine-tune on (default: corpus after token 16384)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
    eval_tokens: int = typer.Option(8192, "--eval-tokens", help="Measure ppl/KLD vs the parent on this many corpus tokens (0 = skip)."),
    json_out: bool = typer.Option(False, "--json"),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """Parameter sharing: W_i = W_base * M_i across adjacent layers; real bytes saved and the quality cost."""
    from sizewise.commands.prune import share_command
    from sizewise.registry.results import share_records
    rec = share_command(model=model, out=out, group_size=group_size, projections=projections, steps=steps,
                  train_file=train_file, force=force, json_out=json_out, eval_tokens=eval_tokens)
    _record("share", lambda: share_records(rec, model, out), no_record, registry)


# --- serve / bench-serve (serving) ---

@app.command()
@user_errors
def serve(
    model: str = typer.Argument(..., help="'bundled', a .gguf file, an HF or sizewise-compressed directory."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    kv_memory: Optional[str] = typer.Option(None, "--kv-memory", help="KV pool size, e.g. 512MiB (default: 20 % of free memory)."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most sequences decoded together."),
    block_size: int = typer.Option(16, "--block-size", help="Tokens per KV block."),
    max_waiting: int = typer.Option(256, "--max-waiting", help="Queue length before answering 429."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16 | fp16"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Compress in memory first (e.g. int8-wo)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model id clients send (default: the file/dir name)."),
    latency_target: float = typer.Option(0.5, "--latency-target", help="Decode step seconds allowed when admitting (0: off)."),
    max_body_bytes: str = typer.Option("1MiB", "--max-body-bytes", help="Largest request body accepted (bigger: 413)."),
    max_stream_buffer: int = typer.Option(512, "--max-stream-buffer",
                                          help="Chunks a stream may fall behind before it is cancelled (a client that stopped reading)."),
    socket_sndbuf: Optional[str] = typer.Option(None, "--socket-sndbuf",
                                                help="Kernel send buffer per connection, e.g. 16KiB (default: the kernel's autotuning)."),
    ab: Optional[list[str]] = typer.Option(None, "--ab", help="A/B variant SOURCE[:RECIPE]=SHARE, repeatable (e.g. bundled:int8-wo=0.2); MODEL gets the rest."),
    ab_seed: Optional[int] = typer.Option(None, "--ab-seed", help="Seed of the split for requests without a `user` (default: random)."),
    no_record: bool = typer.Option(False, "--no-record", help="With --ab: do not record the split's results in the registry."),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """OpenAI-compatible server: continuous batching over a paged KV pool, /metrics and alerts."""
    if ab:
        from sizewise.commands.serve_ab import serve_ab_command
        serve_ab_command(model=model, ab=ab, host=host, port=port, kv_memory=kv_memory, max_batch=max_batch,
                         block_size=block_size, max_waiting=max_waiting, dtype=dtype, recipe=recipe, name=name,
                         latency_target=latency_target or None, seed=ab_seed, record=not no_record, registry=registry,
                         max_body_bytes=max_body_bytes, max_stream_buffer=max_stream_buffer)
        return
    from sizewise.commands.serve import serve_command
    serve_command(model=model, host=host, port=port, kv_memory=kv_memory, max_batch=max_batch, block_size=block_size,
                  max_waiting=max_waiting, dtype=dtype, recipe=recipe, name=name,
                  latency_target=latency_target or None, max_body_bytes=max_body_bytes, max_stream_buffer=max_stream_buffer,
                  socket_sndbuf=socket_sndbuf)


@app.command("bench-serve")
@user_errors
def bench_serve(
    model: str = typer.Argument("bundled", help="Model to serve (see `serve`)."),
    requests: int = typer.Option(32, "--requests", help="Requests per concurrency level."),
    concurrency: str = typer.Option("1,4,16,32", "--concurrency", help="Comma-separated concurrency levels."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Longest completion; each request draws from [max/4, max]."),
    kv_memory: Optional[str] = typer.Option(None, "--kv-memory", help="KV pool size (default 1GiB)."),
    max_batch: int = typer.Option(64, "--max-batch"),
    block_size: int = typer.Option(16, "--block-size"),
    dtype: str = typer.Option("fp32", "--dtype"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Compress in memory first (e.g. int8-wo)."),
    static_batch: int = typer.Option(16, "--static-batch", help="Batch size of baseline (b)."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines"),
    soak: int = typer.Option(0, "--soak", help="Also run N short requests (10 % cancelled, 5 % disconnected)."),
    soak_model: Optional[str] = typer.Option(None, "--soak-model", help="Model for the soak (default: MODEL)."),
    duration: float = typer.Option(1800.0, "--duration", help="Stop sending after this many seconds per level."),
    out: Optional[str] = typer.Option(None, "--out", help="Result JSON (default benchmarks/results/bench_serve.json; "
                                      "with --peer or --workload story: bench_serve_peers.json)."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: cores, per the protocol)."),
    peer: Optional[str] = typer.Option(None, "--peer", help="Also serve the same weights with these peers, comma-separated "
                                       "(vllm, llamacpp), each loaded over HTTP like sizewise's own server; one table."),
    workload: str = typer.Option("mixed", "--workload", help="mixed (the requests above) | story (max(8, 2 x concurrency) "
                                 "story prompts, max_tokens 64, temperature 0; runs the HTTP comparison)."),
    vllm_python: Optional[str] = typer.Option(None, "--vllm-python", help="Python of vLLM's venv (default .venv-vllm/bin/python)."),
    llamacpp_python: Optional[str] = typer.Option(None, "--llamacpp-python",
                                                  help="Python with llama-cpp-python[server] (default: this one)."),
    peer_timeout: float = typer.Option(600.0, "--peer-timeout", help="Seconds a server may take to start answering."),
    peer_dir: Optional[str] = typer.Option(None, "--peer-dir", help="Keep converted peer weights and server logs here "
                                           "(reused when present; default: a temporary directory)."),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
) -> None:
    """Load-test the server on localhost against generate() baselines (or, with --peer, against vLLM/llama.cpp); write JSON."""
    from sizewise.commands.serve import bench_serve_command
    try:
        levels = [int(x) for x in concurrency.split(",") if x.strip()]
    except ValueError:
        raise SizewiseError(f"--concurrency must be comma-separated integers (got {concurrency!r})")
    if peer is not None or workload != "mixed":
        from sizewise.commands.bench_peers import bench_peers_command
        from sizewise.serve.peers import parse_peers
        if recipe:
            raise SizewiseError("--recipe does not apply with --peer: compress first (`sizewise compress`) and bench the "
                                "output directory, so every server gets the same weights")
        bench_peers_command(model=model, peers=parse_peers(peer), concurrency=levels, workload=workload, requests=requests,
                            max_tokens=max_tokens, seed=seed, dtype=dtype, kv_memory=kv_memory, max_batch=max_batch,
                            block_size=block_size, out=out or "benchmarks/results/bench_serve_peers.json",
                            vllm_python=vllm_python, llamacpp_python=llamacpp_python, startup_timeout=peer_timeout,
                            peer_dir=peer_dir)
        return
    out = out or "benchmarks/results/bench_serve.json"
    from sizewise.registry.results import bench_serve_records
    result = bench_serve_command(model=model, requests=requests, concurrency=levels, max_tokens=max_tokens, kv_memory=kv_memory,
                        max_batch=max_batch, block_size=block_size, dtype=dtype, recipe=recipe,
                        static_batch=static_batch, baselines=baselines, soak_requests=soak, soak_model=soak_model,
                        duration_s=duration, out=out, seed=seed, threads=threads)
    _record("bench-serve", lambda: bench_serve_records(result, model, out), no_record, registry)



# --- export (engines) ---

@app.command()
@user_errors
def export(
    src: str = typer.Argument(..., help="'bundled', a .gguf file, an HF or sizewise-compressed directory."),
    to: str = typer.Option(..., "--to", help="gguf (llama.cpp, Ollama) | vllm (compressed-tensors: vLLM, SGLang, transformers) | onnx (ONNX Runtime)."),
    out: str = typer.Option(..., "--out", help="Output file (gguf) or directory (vllm, onnx); refused if it exists, unless --force."),
    type_: Optional[str] = typer.Option(None, "--type", help="Target type for float tensors (gguf: F32 F16 BF16 Q8_0 Q4_0 Q4_1 ...; onnx: fp32 fp16)."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Re-quantize what the target cannot hold exactly (the added KLD is measured)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    measure_tokens: int = typer.Option(2048, "--measure-tokens", help="Protocol tokens for the export-vs-source KLD (0: skip)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    no_record: bool = _no_record(),
    registry: Optional[str] = _registry_opt(),
    mlflow: Optional[str] = _mlflow_opt(),
) -> None:
    """Write a checkpoint in the format of the engine that runs it; report what was exact and what was re-quantized."""
    _check_mlflow(mlflow)
    from sizewise.commands.export import export_command
    from sizewise.registry.results import export_records
    report = export_command(src=src, to=to, out=out, type_=type_, allow_requantize=allow_requantize, force=force,
                   json_out=json_out, measure_tokens=measure_tokens)
    _record("export", lambda: export_records(report, src, out), no_record, registry, mlflow)


# --- registry (which version is better) ---

registry_app = typer.Typer(no_args_is_help=True, add_completion=False,
                           help="Every model sizewise read or wrote, by content hash: lineage, recipes, measurements.")
app.add_typer(registry_app, name="registry")


@registry_app.command("list")
@user_errors
def registry_list(
    parent: Optional[str] = typer.Option(None, "--parent", help="Only direct children of this model (ID prefix)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Only recipes whose name contains this."),
    metric: Optional[str] = typer.Option(None, "--metric", help="NAME (has it) or NAME<VALUE, NAME>=VALUE ... on the latest value, e.g. 'ppl<16'."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Only models with this tag."),
    registry: Optional[str] = _registry_opt(),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Recorded models, newest first, with their latest ppl, KLD, top-1 and size."""
    from sizewise.commands.registry import list_command
    list_command(registry, parent, recipe, metric, tag, json_out)


@registry_app.command("show")
@user_errors
def registry_show(model_id: str = typer.Argument(..., help="ID, unique prefix, tag or recorded path."),
                  registry: Optional[str] = _registry_opt(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Everything known about one model: recipe, paths, lineage tree from the root, every measurement, every run."""
    from sizewise.commands.registry import show_command
    show_command(registry, model_id, json_out)


@registry_app.command("lineage")
@user_errors
def registry_lineage(model_id: str = typer.Argument(..., help="ID, unique prefix, tag or recorded path."),
                     registry: Optional[str] = _registry_opt(), json_out: bool = typer.Option(False, "--json")) -> None:
    """The tree of models made from the same root, this one marked."""
    from sizewise.commands.registry import lineage_command
    lineage_command(registry, model_id, json_out)


@registry_app.command("tag")
@user_errors
def registry_tag(model_id: str = typer.Argument(..., help="ID, unique prefix or recorded path."),
                 name: str = typer.Argument(..., help="Stage name, e.g. candidate or production."),
                 remove: bool = typer.Option(False, "--remove", help="Take the tag off instead."),
                 registry: Optional[str] = _registry_opt(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Tag a model with a stage name (candidate, production, ...)."""
    from sizewise.commands.registry import tag_command
    tag_command(registry, model_id, name, remove, json_out)


@registry_app.command("gc")
@user_errors
def registry_gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be forgotten."),
                registry: Optional[str] = _registry_opt(), json_out: bool = typer.Option(False, "--json")) -> None:
    """Forget models whose files are gone (ancestors of models still on disk are kept)."""
    from sizewise.commands.registry import gc_command
    gc_command(registry, dry_run, json_out)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
