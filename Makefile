# Two commands for a fresh machine:  `make demo` (main job)  and  `make test` (test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: all demo test test-all data env clean

all: test

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $(STAMP)

env: $(STAMP)

$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

data: $(FASHION_MNIST)

demo: env data
	$(BIN)/energysplit compress --demo --out runs/demo --force

test: env data
	$(BIN)/python -m pytest -q -m "not slow"

test-all: env data
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
