# Two commands from a fresh clone:
#   make demo   set up, fit PatchCore on the built-in sealant data, score its test images
#   make test   set up and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup chromium demo test lint benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[fit,openvino,ray,dev]"
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium renders the QA report in one test; without it that test is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report screenshot test will be skipped"; }

demo: $(STAMP)
	$(BIN)/anomaly fit --category sealant --out runs/sealant/patchcore
	$(BIN)/anomaly score --split test --model runs/sealant/patchcore --out runs/sealant/score --report

test: $(STAMP) chromium
	$(BIN)/ruff check anomaly baselines tests benchmarks
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check anomaly baselines tests benchmarks
	$(BIN)/ruff format --check anomaly baselines tests benchmarks

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py --category elpv
	$(BIN)/python benchmarks/run.py --category sealant

clean:
	rm -rf runs .pytest_cache
