# Two entry points, each doing all set-up from a fresh clone:
#   make demo  - the main job on the embedded default (quick suite, shipped checkpoints) -> reports/quick/
#   make test  - the test suite (CPU only)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean heads heads-demo checkpoints checkpoints-pgdat checkpoints-seg seg-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# the site's build is a test; a step of its own because torchattacks pins requests~=2.25.1 and current
	# mkdocs-material needs requests>=2.33, which one resolution refuses (torchattacks runs with the newer requests)
	$(PY) -m pip install --quiet 'mkdocs>=1.6' 'mkdocs-material>=9.5' 'mkdocstrings-python>=1.10'
	$(PY) -m pip install --quiet --no-deps 'robustbench==1.1.1'  # the reference loaders the tests compare with
	$(PY) -m pip install --quiet --no-deps 'cleverhans==4.0.0'  # cw-cleverhans is checked side by side with it (its torch attacks need only torch, numpy, scipy)
	$(PY) -m pip install --quiet 'foolbox==3.3.4'  # fmn and ddn are checked side by side with it (with deps: it imports eagerpy and GitPython)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/robustbench-rpc run --suite quick --out reports/quick

test: $(STAMP)
	$(PY) -m pytest -q

# Retrain the shipped heads (robustbench_rpc/checkpoints/<backbone>+<head>[@adam].safetensors), then the
# convex-heads suite. Deterministic on CPU for a given torch version (FISTA has no randomness, Adam is seeded).
HEAD_BACKBONES := symvit_micro_patch4_32 rpc_symvit_micro_patch4_32
heads: $(STAMP)
	for bb in $(HEAD_BACKBONES); do \
	  $(VENV)/bin/robustbench-rpc train-head --backbone $$bb:packaged --head linear || exit 1; \
	  $(VENV)/bin/robustbench-rpc train-head --backbone $$bb:packaged --head mlp || exit 1; \
	  for h in attention gated_attention mixer; do \
	    $(VENV)/bin/robustbench-rpc train-head --backbone $$bb:packaged --head $$h --compare || exit 1; done; \
	  $(VENV)/bin/robustbench-rpc train-head --backbone $$bb:packaged --head attention --solver adam || exit 1; \
	done

heads-demo: $(STAMP)
	$(VENV)/bin/robustbench-rpc run --suite convex-heads --out reports/convex-heads
	$(VENV)/bin/robustbench-rpc heads-report reports/convex-heads

# Retrain the shipped micro checkpoints from their recipes (robustbench_rpc/training/recipes/<name>.toml) into
# runs/train/<name>, then copy each last.safetensors over the shipped file. Deterministic on CPU for a torch
# version and thread count (the shipped *_pgdat files: OMP_NUM_THREADS=1); rerunning resumes, never restarts.
CLEAN_MICRO := vit_micro_patch4_32 symvit_micro_patch4_32 rpc_symvit_micro_patch4_32 rpc_keyscale_symvit_micro_patch4_32
PGDAT_MICRO := symvit_micro_patch4_32_pgdat rpc_symvit_micro_patch4_32_pgdat rpc_keyscale_symvit_micro_patch4_32_pgdat
checkpoints: $(STAMP)
	for m in $(CLEAN_MICRO); do $(VENV)/bin/robustbench-rpc train --recipe $$m --out runs/train/$$m --no-progress \
	  && cp runs/train/$$m/last.safetensors robustbench_rpc/checkpoints/$$m.safetensors || exit 1; done

checkpoints-pgdat: $(STAMP)
	for m in $(PGDAT_MICRO); do OMP_NUM_THREADS=1 $(VENV)/bin/robustbench-rpc train --recipe $$m --out runs/train/$$m \
	  --no-progress && cp runs/train/$$m/last.safetensors robustbench_rpc/checkpoints/$$m.safetensors || exit 1; done

# The shipped Segmenter micro checkpoints (encoders from the shipped SymViT / RPC-SymViT micro classifiers),
# fine-tuned on digits-seg64 by their recipes (training/recipes/segmenter_linear_*symvit_micro.toml); then the
# embedded segmentation suite (its table, curves and examples in reports/quick-seg/).
SEG_MICRO := segmenter_linear_symvit_micro segmenter_linear_rpc_symvit_micro
checkpoints-seg: $(STAMP)
	for m in $(SEG_MICRO); do OMP_NUM_THREADS=2 $(VENV)/bin/robustbench-rpc train --recipe $$m --out runs/train/$$m \
	  && cp runs/train/$$m/last.safetensors robustbench_rpc/checkpoints/$$m.safetensors || exit 1; done

seg-demo: $(STAMP)
	$(VENV)/bin/robustbench-rpc run --suite quick-seg --out reports/quick-seg

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) reports/quick .pytest_cache
