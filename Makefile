# jepa-clips. `make` lists the targets; variables go on the command line: make train LR=1e-3 EPOCHS=5
# PYTHON=... uses an existing environment (Colab, conda) instead of the .venv this Makefile builds.

PYTHON ?= .venv/bin/python
CONFIG ?= config.yaml
MANIFEST ?= data/manifest.jsonl
RUN ?= experiments/run
CKPT ?= $(RUN)/best.pt
DEVICE ?= auto
# default outputs sit next to what they came from: eval.json and scores.jsonl beside the checkpoint (CKPT),
# report.html beside the scores (SCORES), so another run's checkpoint never overwrites this run's files
CKPT_DIR = $(dir $(CKPT))

# the install stamp: only when PYTHON is the default .venv
INSTALL := $(if $(filter .venv/bin/python,$(PYTHON)),.venv/.installed)

opt = $(if $(2),$(1) $(2))
# the report's default TOP is selection.top of config.yaml (one default for make report and make select)
TOP_DEFAULT = $(shell sed -n 's/^  top: *\([0-9][0-9]*\).*/\1/p' config.yaml)
MANIFEST_FOR_REPORT = $(if $(filter command line environment,$(origin MANIFEST)),$(MANIFEST))
COMMON = $(call opt,--data-root,$(DATA_ROOT)) $(call opt,--encoder,$(ENCODER)) --device $(DEVICE)
# RESUME=1 without MANIFEST=: no --manifest, so train.py continues with the manifest the run recorded
TRAIN_MANIFEST = $(if $(and $(RESUME),$(filter file,$(origin MANIFEST))),,--manifest $(MANIFEST))
TRAIN_ARGS = --config $(CONFIG) $(TRAIN_MANIFEST) --run-dir $(RUN) $(COMMON) $(call opt,--lr,$(LR)) \
	$(call opt,--epochs,$(EPOCHS)) $(call opt,--batch-size,$(BATCH)) $(call opt,--seed,$(SEED)) \
	$(if $(RESUME),--resume) $(ARGS)

.DEFAULT_GOAL := help
.PHONY: help install demo manifest check train eval score merge report learn sample-for-labels select similar test browser walk-readme bench clean

help:
	@echo "jepa-clips: mine driving clips worth a human's review (see README.md)"
	@echo ""
	@echo "  make demo                 whole pipeline on synthetic clips and a tiny encoder (no GPU, no network)"
	@echo "                            [SEED=] [EPOCHS=]"
	@echo "  make test                 run the test suite (builds .venv from requirements.txt if missing)"
	@echo "  make browser              install headless Chromium (apt) so the review-page tests run, not skip"
	@echo "  make install              build .venv from requirements.txt"
	@echo "  make manifest             NUSCENES=/data/nuscenes [VERSION=v1.0-mini] [CAMERAS=CAM_FRONT|a,b|all]"
	@echo "                            [SOURCE=samples|sweeps], or FRAMES_DIR=/data/drives (\"A B\": several),"
	@echo "                            or VIDEOS_DIR=/data/videos [FPS=] (MP4/HEVC, README \"Videos\");"
	@echo "                            [FRAMES=16] [STRIDE=16] [SPLIT=] [SEED=] [OUT=\$$MANIFEST] [ARGS=]"
	@echo "  make check                MANIFEST= [DATA_ROOT=] [ARGS=]  validate a manifest, decode every frame"
	@echo "  make train                MANIFEST= [RUN=experiments/run] [ENCODER=] [LR=] [EPOCHS=] [BATCH=] [SEED=]"
	@echo "                            [DATA_ROOT=] [DEVICE=auto] [RESUME=1] [CONFIG=config.yaml] [ARGS=]"
	@echo "  make eval                 CKPT= MANIFEST= [OUT=eval.json beside CKPT] [LABELS=] [ENCODER=] [DATA_ROOT=]"
	@echo "                            [DEVICE=] [SELECTION=selection the labels came from] [ARGS=]"
	@echo "  make score                CKPT= MANIFEST= [OUT=scores.jsonl beside CKPT] [SHARD=I/N|auto] [ENCODER=]"
	@echo "                            [DATA_ROOT=] [DEVICE=] [ARGS=]   (+ OUT.emb.npy: one embedding per clip)"
	@echo "  make merge                SHARDS=\"a.jsonl b.jsonl\" MANIFEST= OUT=scores.jsonl [ARGS=]"
	@echo "  make select               SCORES= [MANIFEST=] [LABELS=] [TOP=$(TOP_DEFAULT)] [OUT=selection.jsonl beside SCORES]"
	@echo "                            [ARGS=]  a diverse top-K for labelling, near-duplicates folded"
	@echo "                            [RANK_BY=score|probe|mix PROBE=probe.jsonl]  rank by the learnt probe"
	@echo "  make learn                SCORES= LABELS=\"r1.jsonl r2.jsonl\" [OUT=probe.jsonl beside SCORES] [ARGS=]"
	@echo "                            a probe on the embeddings of the labelled clips; p_interesting per clip"
	@echo "  make similar              SCORES= CLIP=clip_id [K=20] [OUT=similar.jsonl beside SCORES] [ARGS=]"
	@echo "  make sample-for-labels    SCORES= [N=200] [SEED=0] [OUT=labels_sample.jsonl beside SCORES] [ARGS=]"
	@echo "                            a random sample by scene to label (unbiased metrics), + OUT.csv"
	@echo "  make report               SCORES= [MANIFEST=] [DATA_ROOT=] [LABELS=] [SELECTION=] [TOP=$(TOP_DEFAULT)] [BOTTOM=10]"
	@echo "                            [OUT=report.html beside SCORES] [ARGS=\"--thumbs 3\"]  HTML review page"
	@echo "  make bench                throughput/memory ratios -> BENCHMARKS.md [BENCH_ARGS=--quick|--only fleet]"
	@echo "  make walk-readme          run every README example in a temporary checkout (tiny encoder; minutes)"
	@echo "  make clean                remove .venv and caches (never experiments/)"
	@echo ""
	@echo "  ARGS=\"...\" passes anything else to the target's script, e.g. ARGS=\"--set training.checkpoint_every=2\""
	@echo "  PYTHON=python3 uses an existing environment instead of .venv"

.venv/.installed: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q -r requirements.txt
	touch $@

install: $(INSTALL)

demo: $(INSTALL)
	$(PYTHON) demo.py $(call opt,--seed,$(SEED)) $(call opt,--epochs,$(EPOCHS)) $(ARGS)

MANIFEST_ARGS = $(call opt,--frames,$(FRAMES)) $(call opt,--stride,$(STRIDE)) $(call opt,--split,$(SPLIT)) \
	$(call opt,--seed,$(SEED)) --output $(or $(OUT),$(MANIFEST)) $(ARGS)

# one source kind at a time (FRAMES_DIR may name several roots, so count the kinds, not the words)
manifest: $(INSTALL)
ifneq ($(word 2,$(if $(NUSCENES),n) $(if $(FRAMES_DIR),f) $(if $(VIDEOS_DIR),v)),)
	@echo "error: pass one of NUSCENES= (nuScenes), FRAMES_DIR= (frame folders), VIDEOS_DIR= (videos)" >&2; exit 2
else ifneq ($(NUSCENES),)
	$(PYTHON) manifest.py nuscenes --dataroot $(NUSCENES) $(call opt,--version,$(VERSION)) \
		$(call opt,--cameras,$(CAMERAS)) $(call opt,--source,$(SOURCE)) $(MANIFEST_ARGS)
else ifneq ($(FRAMES_DIR),)
	$(PYTHON) manifest.py frames --frames-dir $(FRAMES_DIR) $(MANIFEST_ARGS)
else ifneq ($(VIDEOS_DIR),)
	$(PYTHON) manifest.py videos --videos-dir $(VIDEOS_DIR) $(call opt,--fps,$(FPS)) $(MANIFEST_ARGS)
else
	@echo "error: pass NUSCENES=/path/to/nuscenes (a nuScenes download), FRAMES_DIR=/path/to/drives" \
		"(frame folders) or VIDEOS_DIR=/path/to/videos (MP4/HEVC files)" >&2; exit 2
endif

check: $(INSTALL)
	$(PYTHON) manifest.py check --manifest $(MANIFEST) $(call opt,--data-root,$(DATA_ROOT)) $(ARGS)

train: $(INSTALL)
	$(PYTHON) train.py $(TRAIN_ARGS)

eval: $(INSTALL)
	$(PYTHON) eval.py --checkpoint $(CKPT) --manifest $(MANIFEST) --output $(or $(OUT),$(CKPT_DIR)eval.json) \
		$(COMMON) $(call opt,--labels,$(LABELS)) $(call opt,--selection,$(SELECTION)) $(ARGS)

score: $(INSTALL)
	$(PYTHON) infer.py --checkpoint $(CKPT) --manifest $(MANIFEST) \
		--output $(or $(OUT),$(CKPT_DIR)scores.jsonl) \
		$(COMMON) $(call opt,--shard,$(SHARD)) $(ARGS)

merge: $(INSTALL)
	$(PYTHON) infer.py --merge $(SHARDS) --manifest $(MANIFEST) --output $(OUT) $(ARGS)

report: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(PYTHON) report.py --scores $(SCORES) $(call opt,--manifest,$(MANIFEST_FOR_REPORT)) \
		$(call opt,--data-root,$(DATA_ROOT)) $(call opt,--labels,$(LABELS)) $(call opt,--selection,$(SELECTION)) \
		$(call opt,--bottom,$(BOTTOM)) --top $(or $(TOP),$(TOP_DEFAULT)) --output $(or $(OUT),$(dir $(SCORES))report.html) $(ARGS)

select: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(PYTHON) selection.py select --scores $(SCORES) --config $(CONFIG) $(call opt,--manifest,$(MANIFEST_FOR_REPORT)) \
		$(call opt,--data-root,$(DATA_ROOT)) $(call opt,--labels,$(LABELS)) $(call opt,--top,$(TOP)) \
		$(call opt,--rank-by,$(RANK_BY)) $(call opt,--probe,$(PROBE)) \
		--output $(or $(OUT),$(dir $(SCORES))selection.jsonl) $(ARGS)

learn: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(if $(LABELS),,$(error LABELS="round1.jsonl ..." is required (labels exported by the review page)))
	$(PYTHON) learn.py fit --scores $(SCORES) --config $(CONFIG) --labels $(LABELS) \
		--output $(or $(OUT),$(dir $(SCORES))probe.jsonl) $(ARGS)

sample-for-labels: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(PYTHON) sample_labels.py --scores $(SCORES) --n $(or $(N),200) $(call opt,--seed,$(SEED)) \
		--output $(or $(OUT),$(dir $(SCORES))labels_sample.jsonl) $(ARGS)

similar: $(INSTALL)
	$(if $(SCORES),,$(error SCORES=path/to/scores.jsonl is required (written by make score)))
	$(if $(CLIP),,$(error CLIP=clip_id is required (a clip_id from SCORES)))
	$(PYTHON) selection.py similar --scores $(SCORES) --config $(CONFIG) --clip '$(CLIP)' $(call opt,--k,$(K)) \
		--output $(or $(OUT),$(dir $(SCORES))similar.jsonl) $(ARGS)

test: $(INSTALL)
	$(PYTHON) -m pytest -q tests $(ARGS)

# headless Chromium for the review-page tests (they skip without it); best effort: needs root and apt-get
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium (needs root and apt-get); page tests will skip"

walk-readme: $(INSTALL)
	$(PYTHON) tests/readme_examples.py $(ARGS)

bench: $(INSTALL)
	$(PYTHON) bench.py $(BENCH_ARGS) $(ARGS)

clean:
	rm -rf .venv .pytest_cache __pycache__ tests/__pycache__
