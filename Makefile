# stemd: two commands from a fresh clone.
#   make demo    set everything up, start the daemon, make a take, stop the daemon
#   make test    set everything up and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?= facebook/musicgen-small
PROMPT ?= dusty boom bap drums with vinyl crackle
BARS   ?= 4
BPM    ?= 120
METER  ?= 4/4
OUT    ?= takes
PYTEST_ARGS ?=
# A GPU machine: TORCH_INDEX=<PyTorch's CUDA wheel index for your CUDA version> (see README.md)
TORCH_INDEX ?=

.PHONY: setup demo test bench clean plugin

# torch is pinned in constraints.txt (a CPU build here); see README.md for CUDA.
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(PY) -m pip install -q torch==2.13.0 --index-url '$(TORCH_INDEX)')
	$(PY) -m pip install -q -c constraints.txt -e '.[daemon,test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m stemd.demo --model '$(MODEL)' --prompt '$(PROMPT)' --bars $(BARS) --bpm $(BPM) --meter $(METER) --out '$(OUT)'

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) bench/decode.py
	$(PY) bench/conform.py
	$(PY) bench/daemon.py

# the stemd plugin (VST3, CLAP, LV2, JACK) into build/plugin/; DPF_PATH=<a DPF checkout> off Debian
plugin:
	$(MAKE) -C plugin_host/plugin

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
