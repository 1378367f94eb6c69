"""A/B serving: several variants of a model behind one OpenAI API, traffic split by shares.

Why a front app that forwards to one `create_app` per variant (at the ASGI level, in-process)
instead of a second copy of the API: every variant answers exactly as a single-model server
would (same validation, streaming, disconnect handling), and api.py needs no A/B knowledge.
The front app only picks the variant, rewrites the body's `model` to it, adds the
`x-sizewise-variant` header, and watches status, time and stream errors on the way out.

Routing: a request whose `model` is the served name is split by the shares: sticky by its
`user` field when given (sha256 of the user, so the same user lands on the same variant on
every run and every replica while the shares stay), otherwise drawn from a seeded RNG. A
request that names a variant directly goes to it (pinned) and is counted there too.

Every variant's engine loop runs in a background thread, none on the main thread: the main
thread's OpenMP team is faster on a small CPU (engine.py), and an A/B test must not hand one
variant that advantage.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sizewise.errors import SizewiseError
from sizewise.serve.loadgen import percentile
from sizewise.serve.metrics import EngineMetrics

HEADER = "x-sizewise-variant"
ROUTED = ("/v1/completions", "/v1/chat/completions")


# -- the --ab option ------------------------------------------------------------------------

@dataclass(frozen=True)
class VariantSpec:
    """One arm of the split: what to load (source, optional in-memory recipe), its name and share."""

    name: str
    source: str
    recipe: str | None
    share: float


def source_name(source: str) -> str:
    return "bundled" if source == "bundled" else Path(source).name


def parse_ab(spec: str) -> tuple[str, str | None, float]:
    """'SOURCE[:RECIPE]=SHARE' -> (source, recipe, share). A SOURCE that exists as a path is
    taken whole (a path may hold ':'); otherwise the text after the last ':' is the recipe."""
    hint = "expected SOURCE[:RECIPE]=SHARE, e.g. --ab bundled:int8-wo=0.2"
    if "=" not in spec:
        raise SizewiseError(f"--ab {spec!r}: {hint}")
    model, _, share_s = spec.rpartition("=")
    try:
        share = float(share_s)
    except ValueError:
        raise SizewiseError(f"--ab {spec!r}: share {share_s!r} is not a number; {hint}") from None
    if not 0.0 < share < 1.0:
        raise SizewiseError(f"--ab {spec!r}: share must be between 0 and 1, exclusive (got {share_s})")
    recipe = None
    if ":" in model and not Path(model).exists():
        model, _, recipe = model.rpartition(":")
        if not recipe:
            raise SizewiseError(f"--ab {spec!r}: empty recipe after ':'; {hint}")
    if not model:
        raise SizewiseError(f"--ab {spec!r}: no model source before '='; {hint}")
    if model != "bundled" and not Path(model).exists():
        raise SizewiseError(f"--ab {spec!r}: model {model!r} not found (pass 'bundled', a .gguf file or a model directory)")
    if recipe is not None:
        check_recipe(recipe, f"--ab {spec!r}")
    return model, recipe, share


def check_recipe(recipe: str, where: str) -> None:
    from sizewise.compression.recipes import get_recipe

    try:
        cfg = get_recipe(recipe)
    except SizewiseError as e:
        raise SizewiseError(f"{where}: {e}") from None
    if getattr(cfg, "needs_calibration", False):
        raise SizewiseError(f"{where}: recipe {recipe!r} needs calibration: compress it first with "
                            "`sizewise compress` and serve the output directory")


def plan_variants(model: str, recipe: str | None, name: str, ab: list[str]) -> list[VariantSpec]:
    """The primary (MODEL with --recipe, named `name`, share = 1 - the rest) and one variant per --ab."""
    parsed = [parse_ab(s) for s in ab]
    total = sum(p[2] for p in parsed)
    if total >= 1.0 - 1e-9:
        raise SizewiseError(f"--ab shares sum to {total:g}; they must sum to less than 1 (the rest goes to {name!r})")
    out = [VariantSpec(name, model, recipe, 1.0 - total)]
    for spec, (src, rcp, share) in zip(ab, parsed):
        vname = source_name(src) + (f":{rcp}" if rcp else "")
        for v in out:
            if v.name == vname:
                raise SizewiseError(f"--ab {spec!r}: variant name {vname!r} is already taken; each variant must differ")
            if _same_model(v, src, rcp):
                raise SizewiseError(f"--ab {spec!r}: the same model and recipe as variant {v.name!r}; each variant must differ")
        out.append(VariantSpec(vname, src, rcp, share))
    return out


def _same_model(v: VariantSpec, src: str, recipe: str | None) -> bool:
    def key(s: str) -> str:
        return s if s == "bundled" else str(Path(s).resolve())

    return key(v.source) == key(src) and (v.recipe or None) == (recipe or None)


# -- routing --------------------------------------------------------------------------------

def user_point(user: str) -> float:
    """A user's fixed point in [0, 1): the first 8 bytes of sha256(user)."""
    return int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


class Router:
    """Shares -> variant names; sticky per user, seeded-random otherwise."""

    def __init__(self, variants: list[VariantSpec], seed: int | None = None):
        self.names = [v.name for v in variants]
        self.edges, acc = [], 0.0
        for v in variants:
            acc += v.share
            self.edges.append(acc)
        self.rng = random.Random(seed)
        self._lock = threading.Lock()

    def _pick(self, u: float) -> str:
        for name, edge in zip(self.names, self.edges):
            if u < edge:
                return name
        return self.names[-1]  # u at the float rounding of 1.0

    def choose(self, user: str | None = None) -> str:
        if user:
            return self._pick(user_point(user))
        with self._lock:
            u = self.rng.random()
        return self._pick(u)


# -- per-variant numbers --------------------------------------------------------------------

class VariantMetrics(EngineMetrics):
    """EngineMetrics that also keep raw TTFT samples and decode-time sums, for /v1/ab percentiles
    (Prometheus histograms give buckets, not the p50/p95 an A/B comparison reports)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ttft_samples: deque[float] = deque(maxlen=100_000)
        self.generated = 0
        self.decode_s = 0.0
        self.decode_tokens = 0
        self.engine_errors = 0

    def on_token(self, first: bool, seconds: float) -> None:
        super().on_token(first, seconds)
        self.generated += 1
        if first:
            self.ttft_samples.append(seconds)
        else:
            self.decode_s += seconds
            self.decode_tokens += 1

    def on_finish(self, reason: str, e2e_s: float) -> None:
        super().on_finish(reason, e2e_s)
        if reason == "error":
            self.engine_errors += 1


@dataclass
class VariantStats:
    """What the front app saw of one variant's requests."""

    requests: int = 0
    pinned: int = 0
    ok: int = 0
    errors: int = 0  # 5xx, or an error event in a stream
    client_errors: int = 0  # 4xx: the request was refused as sent (429 included)
    disconnected: int = 0
    latency_s: deque = field(default_factory=lambda: deque(maxlen=100_000))


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def variant_summary(v: VariantSpec, st: VariantStats, m: VariantMetrics, uptime_s: float) -> dict:
    lat, ttft = list(st.latency_s), list(m.ttft_samples)
    return {
        "name": v.name, "source": v.source, "recipe": v.recipe, "share": v.share,
        "requests": st.requests, "pinned": st.pinned, "ok": st.ok, "errors": st.errors,
        "client_errors": st.client_errors, "disconnected": st.disconnected,
        "observed_share": None,  # filled by ab_summary
        "latency_s": {"p50": _r(percentile(lat, 0.5)), "p95": _r(percentile(lat, 0.95))},
        "ttft_s": {"p50": _r(percentile(ttft, 0.5)), "p95": _r(percentile(ttft, 0.95))},
        "completion_tokens": m.generated,
        "tokens_per_s": _r(m.generated / uptime_s if uptime_s > 0 else 0.0, 3),
        "decode_tokens_per_s": _r(m.decode_tokens / m.decode_s if m.decode_s > 0 else None, 3),
    }


# -- the front app --------------------------------------------------------------------------

class ABApp:
    """ASGI app: generation endpoints routed to a variant, everything else on the control app."""

    def __init__(self, variants: list[VariantSpec], engines: dict, served_name: str, *, seed: int | None = None,
                 drain_s: float = 30.0, max_body_bytes: int = 1 << 20):
        from sizewise.serve.api import create_app

        self.variants, self.engines, self.served_name = variants, engines, served_name
        self.by_name = {v.name: v for v in variants}
        self.router = Router(variants, seed)
        self.seed = seed
        self.max_body_bytes = max_body_bytes
        self.apps = {v.name: create_app(engines[v.name], v.name, own_engine=False, max_body_bytes=max_body_bytes)
                     for v in variants}
        self.stats = {v.name: VariantStats() for v in variants}
        self.started = time.time()
        self._t0 = time.monotonic()
        self.stopped: float | None = None
        self.control = _control_app(self, drain_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in ROUTED and scope["method"] == "POST":
            await self._route(scope, receive, send)
        else:
            await self.control(scope, receive, send)

    def _decide(self, body: bytes) -> tuple[str | None, bytes, bool]:
        """(variant, body to forward, pinned); variant None for an unknown model. A body that is not a
        JSON object goes to the primary as sent, so that its own validation answers it."""
        from sizewise.serve.validate import InvalidRequest, Limits, parse_body

        primary = self.variants[0].name
        try:  # the API's own parser: size, encoding, NaN and nesting are refused the same way here
            obj = parse_body(body, Limits(self.served_name, 1, 1, self.max_body_bytes))
        except InvalidRequest:
            return primary, body, False
        if not isinstance(obj, dict):
            return primary, body, False
        model = obj.get("model")
        if isinstance(model, str) and model != self.served_name and model in self.by_name:
            return model, body, True
        if isinstance(model, str) and model != self.served_name:
            return None, body, False  # an unknown name: the front app answers (below) with what is served
        if model != self.served_name:
            return primary, body, False  # missing or not a string: the primary's validation answers
        user = obj.get("user")
        name = self.router.choose(user if isinstance(user, str) else None)
        obj["model"] = name
        return name, json.dumps(obj).encode(), False

    async def _route(self, scope, receive, send):
        t0 = time.perf_counter()
        chunks, more, size = [], True, 0
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False) and size <= self.max_body_bytes  # past the cap: the API answers 413
        name, body, pinned = self._decide(b"".join(chunks))
        if name is None:
            await self._unknown_model(json.loads(body)["model"], scope, receive, send)
            return
        st = self.stats[name]
        st.requests += 1
        st.pinned += pinned
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        sub_scope = {**scope, "headers": headers}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: the client's own disconnect

        state = {"status": 0, "stream_error": False}

        async def watch(msg):
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
                msg = {**msg, "headers": list(msg.get("headers", [])) + [(HEADER.encode(), name.encode())]}
            elif msg["type"] == "http.response.body" and b'data: {"error"' in msg.get("body", b""):
                state["stream_error"] = True
            await send(msg)

        try:
            await self.apps[name](sub_scope, replay, watch)
        finally:
            s = state["status"]
            if s == 499:
                st.disconnected += 1
            elif s >= 500 or state["stream_error"] or s == 0:
                st.errors += 1
            elif s >= 400:
                st.client_errors += 1
            else:
                st.ok += 1
                st.latency_s.append(time.perf_counter() - t0)

    async def _unknown_model(self, model: str, scope, receive, send) -> None:
        from sizewise.serve.api import error_response

        names = [self.served_name] + [v.name for v in self.variants if v.name != self.served_name]
        msg = (f"model {model!r} is not served here; this server serves {self.served_name!r} (split between "
               f"its variants) and the variants {', '.join(repr(n) for n in names[1:])} by name")
        await error_response(400, msg, param="model", code="model_not_found")(scope, receive, send)

    def summary(self) -> dict:
        """The numbers /v1/ab serves and the registry records when the server stops."""
        end = self.stopped or time.monotonic()
        up = end - self._t0
        rows = [variant_summary(v, self.stats[v.name], self.engines[v.name].metrics, up) for v in self.variants]
        total = sum(r["requests"] - r["pinned"] for r in rows)
        for r in rows:
            r["observed_share"] = _r((r["requests"] - r["pinned"]) / total) if total else None
        return {"served_model": self.served_name, "seed": self.seed, "uptime_s": round(up, 3),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "routing": "sticky by sha256(user) when `user` is given, else seeded random",
                "variants": rows}


def _control_app(ab: ABApp, drain_s: float):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @asynccontextmanager
    async def lifespan(app):
        for e in ab.engines.values():
            e.start()
        try:
            yield
        finally:
            await asyncio.gather(*(asyncio.to_thread(e.shutdown, drain_s) for e in ab.engines.values()))
            ab.stopped = time.monotonic()

    app = FastAPI(title="sizewise serve (A/B)", lifespan=lifespan)

    @app.get("/v1/models")
    async def models():
        names = [ab.served_name] + [v.name for v in ab.variants if v.name != ab.served_name]
        mml = min(e.max_model_len for e in ab.engines.values())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "sizewise",
                                            "max_model_len": mml} for n in names]}

    @app.get("/v1/ab")
    async def ab_numbers():
        return ab.summary()

    @app.get("/health")
    async def health():
        up = all(e.accepting for e in ab.engines.values())
        per = {}
        for name, e in ab.engines.items():
            alerts = [a.as_dict() for a in e.alerts]
            per[name] = {"engine": e.stats(), "alerts": alerts,
                         "alerting": [a["name"] for a in alerts if a["level"] == "alert"]}
        body = {"status": "ok" if up else "draining", "model": ab.served_name, "variants": per,
                "alerting": sorted({f"{n}:{a}" for n, p in per.items() for a in p["alerting"]})}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    async def metrics():
        registry = next(iter(ab.engines.values())).metrics.registry  # one registry, every series labelled by variant
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
