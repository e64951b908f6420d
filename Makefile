# Every target creates its own virtual environment (.venv) and installs torch pinned first,
# so a fresh clone needs only Python 3.10+ (and, for the GUI tests, an X server: Xvfb).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: venv test lint demo models evaluate bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[testing]"

venv: $(BIN)/activate

## test: lint and run the whole test suite (GUI tests under Xvfb via pytest-xvfb)
test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	env -u QT_QPA_PLATFORM $(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

## demo: segment the bundled nuclei sample with the built-in `nuclei` model
demo: venv
	mkdir -p out
	$(BIN)/tiled-unet predict src/tiled_unet/sample_data/nuclei.png --model nuclei --out out --overwrite
	$(BIN)/tiled-unet info nuclei

clean:
	rm -rf $(VENV) build dist out .pytest_cache .ruff_cache .hypothesis
