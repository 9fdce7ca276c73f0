# gantrain: every target creates and uses the project virtualenv in $(VENV).
VENV    ?= .venv
PY      := $(VENV)/bin/python
# torch/torchvision wheels: override for another platform, e.g. make install TORCH="torch torchvision"
TORCH   ?= torch==2.14.1 torchvision==0.29.1
# where pip finds them: e.g. make install TORCH_INDEX=https://download.pytorch.org/whl/cpu (CPU-only build,
# a fraction of the CUDA build's size); empty: PyPI (on Linux the CUDA build)
TORCH_INDEX ?=
ARGS    ?=
PYTEST_ARGS ?=

.PHONY: install train test tensorboard bench quality gpu-check lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(PY) -m pip install -e '.[dev,cluster,export]'
	touch $@

train: install                       ## default run: MLP GAN on the built-in sine curves
	$(VENV)/bin/gantrain $(ARGS)

test: install                        ## the test suite (CPU, offline, a few minutes)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

tensorboard: install                 ## TensorBoard on http://127.0.0.1:6006
	$(VENV)/bin/tensorboard --logdir outputs --host 127.0.0.1 --port 6006

bench: install                       ## the performance benchmark (writes docs/BENCHMARKS.md)
	$(PY) -m gantrain.tools.bench --write $(ARGS)

quality: install                     ## the quality benchmark vs textbook loops (writes docs/QUALITY.md)
	$(PY) -m gantrain.quality --write $(ARGS)

gpu-check:                           ## CUDA tests + CUDA bench on a GPU machine (docs/GPU_CHECK.md); GPU_CHECK_DRY=1: dry run
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash tools/gpu_check.sh

lint: install
	$(VENV)/bin/ruff check gantrain tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
