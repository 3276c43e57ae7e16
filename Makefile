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
MANIFEST_FOR_REPORT = $(if $(filter command line environment,$(origin MANIFEST)),$(MANIFEST))
COMMON = $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--encoder,$(ENCODER)) --device $(DEVICE)
TRAIN_ARGS = --config $(CONFIG) --manifest $(MANIFEST) --run-dir $(RUN) $(COMMON) $(call opt,--lr,$(LR)) \
	$(call opt,--epochs,$(EPOCHS)) $(call opt,--batch-size,$(BATCH)) $(call opt,--seed,$(SEED)) \
	$(if $(RESUME),--resume) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install demo manifest check train eval score merge report test bench clean

help:
	@echo "jepa-clips: mine driving clips worth a human's review (see README.md)"
	@echo ""
	@echo "  make demo                 whole pipeline on synthetic clips and a tiny encoder (no GPU, no network)"
	@echo "  make test                 run the test suite (builds .venv from requirements.txt if missing)"
	@echo "  make install              build .venv from requirements.txt"
	@echo "  make manifest             NUSCENES=/data/nuscenes [VERSION=v1.0-mini] [CAMERAS=CAM_FRONT|a,b|all] [SOURCE=samples|sweeps]"
	@echo "                            or FRAMES_DIR=/data/drives; [FRAMES=16] [STRIDE=16] [SPLIT=] [SEED=] [OUT=\$$MANIFEST]"
	@echo "  make check                MANIFEST= [DATA_ROOT=]   validate a manifest and decode every frame"
	@echo "  make train                MANIFEST= [RUN=experiments/run] [ENCODER=] [LR=] [EPOCHS=] [BATCH=] [SEED=]"
	@echo "                            [DATA_ROOT=] [DEVICE=auto] [RESUME=1] [CONFIG=config.yaml] [ARGS=]"
	@echo "  make eval                 CKPT= MANIFEST= [OUT=\$$RUN/eval.json] [LABELS=] [ENCODER=] [DATA_ROOT=] [DEVICE=]"
	@echo "  make score                CKPT= MANIFEST= [OUT=\$$RUN/scores.jsonl] [SHARD=I/N] [ENCODER=] [DATA_ROOT=]"
	@echo "  make merge                SHARDS=\"a.jsonl b.jsonl\" MANIFEST= OUT=scores.jsonl"
	@echo "  make report               SCORES= [MANIFEST=] [DATA_ROOT=] [TOP=50] [OUT=report.html]  HTML review page"
	@echo "  make select               SCORES= [MANIFEST=] [LABELS=] [TOP=50] [OUT=selection.jsonl]  clips to label, near-duplicates folded"
	@echo "  make similar              SCORES= CLIP=clip_id [K=20] [OUT=similar.jsonl]  nearest clips by embedding cosine"
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

MANIFEST_ARGS = $(call opt,--frames,$(FRAMES)) $(call opt,--stride,$(STRIDE)) $(call opt,--split,$(SPLIT)) \
	$(call opt,--seed,$(SEED)) --output $(or $(OUT),$(MANIFEST)) $(ARGS)

manifest: $(INSTALL)
ifneq ($(and $(NUSCENES),$(FRAMES_DIR)),)
	@echo "error: pass NUSCENES= (a nuScenes download) or FRAMES_DIR= (a folder of frame folders), not both" >&2; exit 2
else ifneq ($(NUSCENES),)
	$(PYTHON) manifest.py nuscenes --dataroot $(NUSCENES) $(call opt,--version,$(VERSION)) \
		$(call opt,--cameras,$(CAMERAS)) $(call opt,--source,$(SOURCE)) $(MANIFEST_ARGS)
else ifneq ($(FRAMES_DIR),)
	$(PYTHON) manifest.py frames --frames-dir $(FRAMES_DIR) $(MANIFEST_ARGS)
else
	@echo "error: pass NUSCENES=/path/to/nuscenes (a nuScenes download) or FRAMES_DIR=/path/to/drives (one folder of frames per scene)" >&2; exit 2
endif

check: $(INSTALL)
	$(PYTHON) manifest.py check --manifest $(MANIFEST) $(call opt,--data-root,$(DATA_ROOT)) $(ARGS)

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

report: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(PYTHON) report.py --scores $(SCORES) $(call opt,--manifest,$(MANIFEST_FOR_REPORT)) \
		$(call opt,--data-root,$(DATA_ROOT)) --top $(or $(TOP),50) --output $(or $(OUT),report.html)

.PHONY: select similar
select: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(PYTHON) selection.py select --scores $(SCORES) --config $(CONFIG) $(call opt,--manifest,$(MANIFEST_FOR_REPORT)) \
		$(call opt,--data-root,$(DATA_ROOT)) $(call opt,--labels,$(LABELS)) $(call opt,--top,$(TOP)) \
		--output $(or $(OUT),selection.jsonl) $(ARGS)

similar: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(if $(CLIP),,$(error CLIP=clip_id is required (a clip_id from SCORES)))
	$(PYTHON) selection.py similar --scores $(SCORES) --config $(CONFIG) --clip '$(CLIP)' $(call opt,--k,$(K)) \
		--output $(or $(OUT),similar.jsonl) $(ARGS)

test: $(INSTALL)
	$(PYTHON) -m pytest -q tests $(ARGS)

bench: $(INSTALL)
	$(PYTHON) bench.py $(BENCH_ARGS)

clean:
	rm -rf .venv .pytest_cache __pycache__ tests/__pycache__
