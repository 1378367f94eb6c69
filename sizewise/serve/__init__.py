"""Serving engine (vLLM v1's split): kv_pool (blocks + tables) -> scheduler (queues, admission, preemption)
-> runner (batched paged forward, GQA and MLA) -> engine (loop thread, request handles) -> api (OpenAI HTTP)
-> server (uvicorn); metrics (Prometheus + alerts), sampling, loadgen + bench (bench-serve)."""
