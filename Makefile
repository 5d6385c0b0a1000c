# Set-up and the two entry points of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The installed marker is rebuilt when the package metadata changes.
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,test]'
	touch $(STAMP)

# The demo's data: Debian's Fashion-MNIST package (nothing is downloaded at run time).
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

$(FASHION_MNIST):
	apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist) \
		|| sudo apt-get install -y dataset-fashion-mnist

demo: $(STAMP) $(FASHION_MNIST)
	$(BIN)/caretrans train --recipe fashion-mnist-quick --threads 2 --output runs/fashion-mnist-$$(date +%Y%m%d-%H%M%S)

# The tests of the native runtimes (ONNX Runtime, OpenVINO, Core ML tools, ExecuTorch, LiteRT) run in a
# process of their own: their thread pools must not be inherited by the DataLoader workers that other tests fork.
NATIVE_RUNTIME_TESTS := tests/test_bench.py tests/test_export.py tests/test_quant.py tests/test_mobile.py \
	tests/test_litert.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup $(addprefix --ignore=,$(NATIVE_RUNTIME_TESTS))
	$(BIN)/python -m pytest -q -p no:cacheprovider $(NATIVE_RUNTIME_TESTS)

clean:
	rm -rf $(VENV) build src/*.egg-info
