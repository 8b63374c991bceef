# The two commands a new user needs: `make demo` and `make test`.
PYTHON   ?= python3
VENV     ?= .venv
EXECUTOR ?= local   # `make demo EXECUTOR=ray` runs the same job through Ray
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch/torchvision pinned together so the CPU wheels on a dev box and the CUDA wheels in the
	# image agree; pip's own constraints may narrow this further.
	$(BIN)/pip install --quiet --no-cache-dir "torch>=2.3,<=2.14.1" "torchvision>=0.18,<=0.29.1"
	$(BIN)/pip install --quiet --no-cache-dir -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/polyp-synth run jobs/demo.yaml --executor $(strip $(EXECUTOR))
	$(BIN)/polyp-synth inspect runs/demo
	$(BIN)/polyp-synth preview runs/demo --n 16 --out runs/demo/contact_sheet.png
	$(BIN)/polyp-synth export runs/demo --out runs/demo-export   # the gate's accepted samples, as trainers read them

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_masks.py
	$(BIN)/python bench/bench_generate.py --config jobs/demo-sdxl.yaml
	$(BIN)/python bench/bench_transplant.py

clean:
	rm -rf runs models .pytest_cache
