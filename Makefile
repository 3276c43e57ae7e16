# jepa-clips. `make` lists the targets; variables go on the command line: make train LR=1e-3 EPOCHS=5
# PYTHON=... uses an existing environment (Colab, conda) instead of the .venv this Makefile builds.

PYTHON ?= .venv/bin/python
CONFIG ?= config.yaml
MANIFEST ?= data/manifest.jsonl
RUN ?= experiments/run
CKPT ?= $(RUN)/best.pt
DEVICE ?= auto

# the install stamp: only when PYTHON is the default .venv
INSTALL := $(if $(filter .venv/bin/python,$(PYTHON)),.venv/.installed)

opt = $(if $(2),$(1) $(2))
COMMON = $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--encoder,$(ENCODER)) --device $(DEVICE)
TRAIN_ARGS = --config $(CONFIG) --manifest $(MANIFEST) --run-dir $(RUN) $(COMMON) $(call opt,--lr,$(LR)) \
	$(call opt,--epochs,$(EPOCHS)) $(call opt,--batch-size,$(BATCH)) $(call opt,--seed,$(SEED)) \
	$(if $(RESUME),--resume) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install demo train eval score merge test bench clean

help:
	@echo "jepa-clips: mine driving clips worth a human's review (see README.md)"
	@echo ""
	@echo "  make demo                 whole pipeline on synthetic clips and a tiny encoder (no GPU, no network)"
	@echo "  make test                 run the test suite (builds .venv from requirements.txt if missing)"
	@echo "  make install              build .venv from requirements.txt"
	@echo "  make train                MANIFEST= [RUN=experiments/run] [ENCODER=] [LR=] [EPOCHS=] [BATCH=] [SEED=]"
	@echo "                            [DATA_ROOT=] [DEVICE=auto] [RESUME=1] [CONFIG=config.yaml] [ARGS=]"
	@echo "  make eval                 CKPT= MANIFEST= [OUT=\$$RUN/eval.json] [LABELS=] [ENCODER=] [DATA_ROOT=] [DEVICE=]"
	@echo "  make score                CKPT= MANIFEST= [OUT=\$$RUN/scores.jsonl] [SHARD=I/N] [ENCODER=] [DATA_ROOT=]"
	@echo "  make merge                SHARDS=\"a.jsonl b.jsonl\" MANIFEST= OUT=scores.jsonl"
	@echo "  make bench                throughput/memory ratios -> BENCHMARKS.md [BENCH_ARGS=--quick]"
	@echo "  make clean                remove .venv and caches (never experiments/)"
	@echo ""
	@echo "  ARGS=\"...\" passes anything else, e.g. ARGS=\"--set training.checkpoint_every=2\""
	@echo "  PYTHON=python3 uses an existing environment instead of .venv"

.venv/.installed: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	touch $@

install: $(INSTALL)

demo: $(INSTALL)
	$(PYTHON) demo.py $(ARGS)

train: $(INSTALL)
	$(PYTHON) train.py $(TRAIN_ARGS)

eval: $(INSTALL)
	$(PYTHON) eval.py --checkpoint $(CKPT) --manifest $(MANIFEST) --output $(or $(OUT),$(RUN)/eval.json) \
		$(COMMON) $(call opt,--labels,$(LABELS)) $(ARGS)

score: $(INSTALL)
	$(PYTHON) infer.py --checkpoint $(CKPT) --manifest $(MANIFEST) --output $(or $(OUT),$(RUN)/scores.jsonl) \
		$(COMMON) $(call opt,--shard,$(SHARD)) $(ARGS)

merge: $(INSTALL)
	$(PYTHON) infer.py --merge $(SHARDS) --manifest $(MANIFEST) --output $(OUT)

test: $(INSTALL)
	$(PYTHON) -m pytest -q tests $(ARGS)

bench: $(INSTALL)
	$(PYTHON) bench.py $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache __pycache__ tests/__pycache__
