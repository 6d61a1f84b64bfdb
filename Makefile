# ahamask-lightning: the commands a researcher runs. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/synth
# the testbed the demo and the reproduce targets use: the 8 x 16 one (TESTBED=checkpoints/tiny_lalm: the 6 x 8 one)
TESTBED ?= checkpoints/tiny_lalm_8x16g
RUNS ?= runs

.PHONY: help install demo test tiny-data testbed reproduce-tiny reproduce-table1 reproduce-table1-released reproduce-qwen2audio \
        reproduce-ablations figures bench bench-smoke clean

help: ## list these targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/; s|$$(DATA)|$(DATA)|g; s|$$(RUNS)|$(RUNS)|g'
	@echo "(DATA=$(DATA) RUNS=$(RUNS) TESTBED=$(TESTBED): override any of them, e.g. make demo TESTBED=checkpoints/tiny_lalm)"

$(BIN)/ahamask: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/ahamask ## create .venv and install the project (CPU is enough)

demo: install ## synthesise speech, train a gender mask on TinyLALM, compare with and without instruction
	$(BIN)/python -m ahamask_lightning.demo --checkpoint $(TESTBED) --out $(RUNS)/demo $(if $(DEMO_DATA),--data $(DEMO_DATA))

test: install ## run the test suite (CPU, offline)
	$(BIN)/python -m pytest tests -p no:cacheprovider --timeout 900

$(DATA)/summary.json:
	$(BIN)/ahamask data synth --out $(DATA) --n 6000 --seed 0 --asr-extra 24000

tiny-data: install $(DATA)/summary.json ## synthesise the SynthSpeech corpus into $(DATA) (espeak-ng + sox)

REPRODUCE_ARGS ?=
reproduce-tiny: tiny-data ## the AHAMask table on TinyLALM (4 conditions x tasks; REPRODUCE_ARGS="--tasks gr,asr" etc.)
	$(BIN)/python -m ahamask_lightning.reproduce tiny --data $(DATA) --checkpoint $(TESTBED) --out $(RUNS)/reproduce_tiny \
		$(REPRODUCE_ARGS)

reproduce-table1: install ## SALMONN-13B Table 1 (needs the released weights; says which paths are missing)
	$(BIN)/python -m ahamask_lightning.reproduce table1 --out $(RUNS)/table1

reproduce-table1-released: install ## the same, testing the ten masks released with the paper (no training)
	$(BIN)/python -m ahamask_lightning.reproduce table1 --released --out $(RUNS)/table1_released

reproduce-qwen2audio: install ## Qwen2-Audio-7B GR (Instruct) and ASV (Base) rows (needs the weights)
	$(BIN)/python -m ahamask_lightning.reproduce qwen2audio --out $(RUNS)/qwen2audio

# Quick look (a few CPU minutes): make reproduce-ablations ABLATION_QUICK=1 (or ABLATION_STEPS=N, ABLATION_ARGS=...)
ABLATION_QUICK ?=
ABLATION_STEPS ?=
ABLATION_ARGS ?=
reproduce-ablations: tiny-data ## lambda sweep, 3 seeds + intersection, progressive activation, wording (ABLATION_QUICK=1: minutes)
	$(BIN)/python -m ahamask_lightning.reproduce ablations --data $(DATA) --checkpoint $(TESTBED) --out $(RUNS)/ablations \
		$(if $(ABLATION_QUICK),--quick) $(if $(ABLATION_STEPS),--steps $(ABLATION_STEPS)) $(ABLATION_ARGS)

figures: install ## every PNG from the runs' summary.json files, into $(RUNS)/figures
	$(BIN)/python -m ahamask_lightning.reproduce figures --runs $(RUNS) --out $(RUNS)/figures

bench: install ## training, cache, decoding and serving costs (one torch thread), then BENCHMARKS.md's tables; data loading into $(RUNS)/bench_data.json
	$(BIN)/python -m bench --threads 1
	$(BIN)/python -m bench.report
	$(BIN)/python bench/bench_data.py --clips 400 --out $(RUNS)/bench_data.json

bench-smoke: install ## every benchmark in its tiny CPU mode (seconds)
	$(BIN)/python -m bench --smoke
	$(BIN)/python bench/bench_data.py --smoke

clean: ## remove $(RUNS) and lightning_logs (never the corpus or the checkpoints)
	rm -rf $(RUNS) lightning_logs

# ---- TinyLALM testbeds: `make testbed RECIPE=<name>` grows or trains one (docs/testbed.md) ----------
# checkpoints/ keeps 6x8 (tiny_lalm) and 8x16g; the others' model cards are in docs/testbeds/.
FIT := $(BIN)/ahamask fit
GROWN := $(FIT) --config experiments/pretrain_tiny_lalm_8x16_grown.yaml
LLM = '{"hidden_size":192,"intermediate_size":512,"num_hidden_layers":$(1),"num_attention_heads":$(2),"num_key_value_heads":$(2),"max_position_embeddings":512,"rms_norm_eps":1.0e-05,"tie_word_embeddings":true}'
# init_args of the model, and where a recipe's run logs go
M := --model.init_args
LOGS = --trainer.default_root_dir $(RUNS)/pretrain_tiny_lalm_$(1)

define RECIPE_6x8
$(FIT) --config experiments/pretrain_tiny_lalm.yaml
$(FIT) --config experiments/pretrain_tiny_lalm_stage2.yaml
$(FIT) --config experiments/pretrain_tiny_lalm_stage3.yaml
$(FIT) --config experiments/pretrain_tiny_lalm_stage4.yaml
$(FIT) --config experiments/pretrain_tiny_lalm_stage5.yaml
$(FIT) --config experiments/pretrain_tiny_lalm_stage6.yaml
endef
RECIPE_8x16g = $(GROWN) $(M).grow_from checkpoints/tiny_lalm
RECIPE_8x32g = $(GROWN) $(M).config.llm $(call LLM,8,32) $(M).grow_from checkpoints/tiny_lalm_8x16g \
  $(M).out_dir checkpoints/tiny_lalm_8x32g --trainer.max_steps 5000 --trainer.max_time 00:00:42:00 $(call LOGS,8x32g)
RECIPE_12x32g = $(GROWN) $(M).config.llm $(call LLM,12,32) $(M).grow_from checkpoints/tiny_lalm_8x32g \
  $(M).out_dir checkpoints/tiny_lalm_12x32g $(M).lr 0.0003 --trainer.max_steps 5000 --trainer.max_time 00:00:45:00 \
  $(call LOGS,12x32g)
RECIPE_12x32s = $(GROWN) $(M).config.llm $(call LLM,12,32) $(M).grow_from checkpoints/tiny_lalm_8x32g \
  $(M).out_dir checkpoints/tiny_lalm_12x32s $(M).grow_layers stack $(M).lr 0.0005 \
  --trainer.max_steps 5000 --trainer.max_time 00:00:50:00 $(call LOGS,12x32s)
RECIPE_16x32s = $(GROWN) $(M).config.llm $(call LLM,16,32) $(M).grow_from checkpoints/tiny_lalm_12x32s \
  $(M).out_dir checkpoints/tiny_lalm_16x32s $(M).grow_layers stack $(M).lr 0.0005 \
  --trainer.max_steps 5000 --trainer.max_time 00:00:45:00 $(call LOGS,16x32s)
# 12x32s trained on with 40 % of its ASR examples given without an instruction
RECIPE_12x32s_if = $(GROWN) $(M).config.llm $(call LLM,12,32) $(M).grow_from null \
  $(M).init_from checkpoints/tiny_lalm_12x32s $(M).out_dir checkpoints/tiny_lalm_12x32s_if \
  $(M).instruction_free '{asr: 0.4}' $(M).lr 0.0003 $(M).warmup_steps 100 --trainer.max_steps 1800 \
  --trainer.max_time 00:00:30:00 --trainer.val_check_interval 600 $(call LOGS,12x32s_if)
# 16 x 32 heads from scratch, sized for a GPU; on a CPU add --trainer.precision 32-true
RECIPE_16x32_gpu = $(FIT) --config experiments/pretrain_tiny_lalm_16x32_gpu.yaml
# the from-scratch model trained on for 1200 steps on the CPU, without and with silent instruction-free examples
CONTINUE_16X32 = $(FIT) --config experiments/pretrain_tiny_lalm_16x32_gpu.yaml $(M).lr 0.0005 $(M).warmup_steps 50 \
  --trainer.precision 32-true --trainer.max_steps 1200 --trainer.max_time 00:00:38:00 --trainer.limit_val_batches 0 \
  --data.init_args.batch_size 24 --data.init_args.num_workers 1 $(M).init_from checkpoints/tiny_lalm_16x32_gpu
RECIPE_16x32_gpu_cpu = $(CONTINUE_16X32) $(M).out_dir checkpoints/tiny_lalm_16x32_gpu_cpu $(call LOGS,16x32_gpu_cpu)
RECIPE_16x32_silent = $(CONTINUE_16X32) $(M).out_dir checkpoints/tiny_lalm_16x32_silent $(call LOGS,16x32_silent) \
  $(M).instruction_free '{asr: 0.1, gr: 0.1, src: 0.1, asv: 0.1, aac: 0.1, gr_asr: 0.1, json: 0.1}' \
  $(M).instruction_free_target ''

RECIPES := 6x8 8x16g 8x32g 12x32g 12x32s 16x32s 12x32s_if 16x32_gpu 16x32_gpu_cpu 16x32_silent
ifneq ($(filter testbed,$(MAKECMDGOALS)),)
ifeq ($(filter $(RECIPE),$(RECIPES)),)
$(error RECIPE=$(RECIPE): expected one of $(RECIPES) (docs/testbed.md))
endif
endif

testbed: tiny-data ## grow or train one TinyLALM testbed: make testbed RECIPE=8x32g (recipes: docs/testbed.md)
	$(RECIPE_$(RECIPE))
