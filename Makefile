# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
RUN ?= runs/demo

.PHONY: demo test test-browser install venv bench clean recipes

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python

# torch first, from a variable a user can override (e.g. a CUDA build), then the project.
install: venv
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	[ -d $(DATA)/raw/shakespeare ] || $(BIN)/scratchlm datasets get shakespeare --out $(DATA)/raw/shakespeare
	$(BIN)/scratchlm prepare $(DATA)/raw/shakespeare --out $(DATA)/shakespeare-char --tokenizer char --overwrite
	$(BIN)/scratchlm train --config configs/demo.yaml --data $(DATA)/shakespeare-char --out $(RUN) --overwrite
	$(BIN)/scratchlm generate $(RUN)/final --prompt "ROMEO:" --max-new-tokens 240 --num-samples 3 --temperature 0.8 --top-k 40 --seed 1
	$(BIN)/scratchlm evaluate $(RUN)/final --data $(DATA)/shakespeare-char
	$(BIN)/scratchlm plot $(RUN)
	@echo ""
	@echo "Done. The model directory is $(RUN)/final and the loss curve $(RUN)/loss.png."
	@echo "Generate more text with:"
	@echo "  $(BIN)/scratchlm generate $(RUN)/final --prompt \"JULIET:\" --max-new-tokens 240 --temperature 0.8 --top-p 0.95"
	@echo "  $(BIN)/python -c \"import scratchlm; m, t = scratchlm.load('$(RUN)/final'); print(scratchlm.generate(m, t, prompt='HAMLET:', max_new_tokens=200)[0])\""

test: install
	@[ -x /usr/bin/chromium ] || echo "note: /usr/bin/chromium is not installed, so the browser test (tests/serve/test_browser.py) is SKIPPED; 'make test-browser' installs Chromium and runs it"
	@$(BIN)/python bench/llamacpp.py --find >/dev/null || echo "note: llama.cpp is not built, so tests/interop/test_llamacpp.py is SKIPPED; '$(BIN)/python bench/llamacpp.py' builds it once (45 min on 2 shared cores)"
	$(BIN)/python -m pytest -rs

# The web chat page end to end in headless Chromium: Debian's chromium + chromium-driver
# (installed with apt-get if absent; Selenium drives them, no browser is downloaded).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: install
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing chromium and chromium-driver with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi
	$(BIN)/python -m pytest -rs tests/serve/test_browser.py

bench: install
	$(BIN)/pip install -q -e ".[bench]" || echo "note: the bench extra (CTranslate2) could not be installed: its rows are skipped"
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/train_dtype.py
	$(BIN)/python bench/decode_speed.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/quality_char.py
	$(BIN)/python bench/prepare_memory.py
	$(BIN)/python bench/beam_speed.py
	$(BIN)/python bench/smollm2_decode.py
	$(BIN)/python recipes/tools.py smollm2 --out bench/out/smollm2 && $(BIN)/python bench/lora_step.py bench/out/smollm2 --dtype auto
	$(BIN)/python bench/seq2seq_mt.py --minutes 12
	$(BIN)/python bench/serve_load.py

# Every recipe of docs/recipes/ end to end on real data (each sized for 2 CPU cores;
# not part of `make test`); rewrites the result sections of the pages from what the run printed.
# Debian packages they use, installed with apt-get if absent: Chromium (the QA recipe asks its
# question in the web chat page) and a CJK font (the en-zh attention map's labels).
recipes: install
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -f /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; then \
		echo "installing chromium, chromium-driver and fonts-wqy-zenhei with apt-get"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei \
			|| echo "note: apt-get failed: the QA recipe's web-chat step will stop, and Chinese labels are drawn as boxes"; \
	fi
	$(BIN)/python -m recipes all

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache
