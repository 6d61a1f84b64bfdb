# ahamask-lightning: the commands a researcher runs. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/synth
TINY ?= checkpoints/tiny_lalm
# the testbed the demo and the reproduce targets use: the 8 x 16 grown model (TESTBED=$(TINY): the 6 x 8 one)
TESTBED ?= checkpoints/tiny_lalm_8x16g
RUNS ?= runs

.PHONY: help install demo test tiny-data tiny-lalm tiny-lalm-8x16g tiny-lalm-8x32g tiny-lalm-12x32g tiny-lalm-12x32s tiny-lalm-16x32s tiny-lalm-12x32s-if tiny-lalm-16x32-gpu tiny-lalm-16x32-gpu-cpu tiny-lalm-16x32-silent tiny-gpu reproduce-tiny reproduce-table1 reproduce-qwen2audio \
        reproduce-ablations figures bench-smoke clean

help:
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/ahamask: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/ahamask ## create .venv and install the project (CPU is enough)

test: install ## run the test suite
	$(BIN)/python -m pytest tests -p no:cacheprovider --timeout 900

$(DATA)/summary.json:
	$(BIN)/ahamask data synth --out $(DATA) --n 6000 --seed 0 --asr-extra 24000

tiny-data: install $(DATA)/summary.json ## synthesise the SynthSpeech corpus (espeak-ng + sox)

demo: install ## the main job: synth data, train a GR mask on TinyLALM, compare with/without instruction
	$(BIN)/python -m ahamask_lightning.demo --checkpoint $(TESTBED) --out $(RUNS)/demo $(if $(DEMO_DATA),--data $(DEMO_DATA))

tiny-lalm: tiny-data ## pretrain the TinyLALM testbed from instructions, six stages (writes $(TINY))
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm.yaml
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_stage2.yaml
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_stage3.yaml
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_stage4.yaml
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_stage5.yaml
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_stage6.yaml

tiny-lalm-8x16g: tiny-data ## the enlarged 8 x 16-head testbed grown from $(TINY) on the CPU (writes checkpoints/tiny_lalm_8x16g)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_8x16_grown.yaml --model.init_args.grow_from $(TINY)

# 8 x 32 heads (head_dim 6), grown from the 8 x 16 model: the grown YAML with a wider LLM (42 min here)
LLM_8X32 := {"hidden_size":192,"intermediate_size":512,"num_hidden_layers":8,"num_attention_heads":32,"num_key_value_heads":32,"max_position_embeddings":512,"rms_norm_eps":1.0e-05,"tie_word_embeddings":true}
tiny-lalm-8x32g: tiny-data ## the 8 x 32-head testbed grown from checkpoints/tiny_lalm_8x16g (writes checkpoints/tiny_lalm_8x32g)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_8x16_grown.yaml --model.init_args.config.llm '$(LLM_8X32)' \
	  --model.init_args.grow_from checkpoints/tiny_lalm_8x16g --model.init_args.out_dir checkpoints/tiny_lalm_8x32g \
	  --trainer.max_steps 5000 --trainer.max_time 00:00:42:00 --trainer.default_root_dir $(RUNS)/pretrain_tiny_lalm_8x32g

# 12 x 32 heads, grown from the 8 x 32 model: four more layers that start as identities (45 min here)
LLM_12X32 := {"hidden_size":192,"intermediate_size":512,"num_hidden_layers":12,"num_attention_heads":32,"num_key_value_heads":32,"max_position_embeddings":512,"rms_norm_eps":1.0e-05,"tie_word_embeddings":true}
tiny-lalm-12x32g: tiny-data ## the 12 x 32-head testbed grown from checkpoints/tiny_lalm_8x32g (writes checkpoints/tiny_lalm_12x32g)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_8x16_grown.yaml --model.init_args.config.llm '$(LLM_12X32)' \
	  --model.init_args.grow_from checkpoints/tiny_lalm_8x32g --model.init_args.out_dir checkpoints/tiny_lalm_12x32g \
	  --model.init_args.lr 0.0003 --trainer.max_steps 5000 --trainer.max_time 00:00:45:00 \
	  --trainer.default_root_dir $(RUNS)/pretrain_tiny_lalm_12x32g

tiny-lalm-12x32s: tiny-data ## 12 x 32 heads by depth up-scaling of checkpoints/tiny_lalm_8x32g (layers 0-5 + 2-7; writes checkpoints/tiny_lalm_12x32s)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_8x16_grown.yaml --model.init_args.config.llm '$(LLM_12X32)' \
	  --model.init_args.grow_from checkpoints/tiny_lalm_8x32g --model.init_args.out_dir checkpoints/tiny_lalm_12x32s \
	  --model.init_args.grow_layers stack --model.init_args.lr 0.0005 \
	  --trainer.max_steps 5000 --trainer.max_time 00:00:50:00 --trainer.default_root_dir $(RUNS)/pretrain_tiny_lalm_12x32s

# 16 x 32 heads by stacking the 12 x 32 one again (layers 0-7 + 4-11)
LLM_16X32 := {"hidden_size":192,"intermediate_size":512,"num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":32,"max_position_embeddings":512,"rms_norm_eps":1.0e-05,"tie_word_embeddings":true}
tiny-lalm-16x32s: tiny-data ## 16 x 32 heads by depth up-scaling of checkpoints/tiny_lalm_12x32s (layers 0-7 + 4-11; writes checkpoints/tiny_lalm_16x32s)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_8x16_grown.yaml --model.init_args.config.llm '$(LLM_16X32)' \
	  --model.init_args.grow_from checkpoints/tiny_lalm_12x32s --model.init_args.out_dir checkpoints/tiny_lalm_16x32s \
	  --model.init_args.grow_layers stack --model.init_args.lr 0.0005 \
	  --trainer.max_steps 5000 --trainer.max_time 00:00:45:00 --trainer.default_root_dir $(RUNS)/pretrain_tiny_lalm_16x32s

# Issue 3's instruction-free experiment: 12x32s trained on with 40 % of its ASR examples (about a fifth
# of all examples) given without an instruction, as real LALMs see ASR in their first stage
tiny-lalm-12x32s-if: tiny-data ## 12x32s trained on with instruction-free ASR examples (40 % of ASR; writes checkpoints/tiny_lalm_12x32s_if)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_8x16_grown.yaml --model.init_args.config.llm '$(LLM_12X32)' \
	  --model.init_args.grow_from null --model.init_args.init_from checkpoints/tiny_lalm_12x32s --model.init_args.out_dir checkpoints/tiny_lalm_12x32s_if \
	  --model.init_args.instruction_free '{asr: 0.4}' --model.init_args.lr 0.0003 --model.init_args.warmup_steps 100 \
	  --trainer.max_steps 1800 --trainer.max_time 00:00:30:00 --trainer.val_check_interval 600 --trainer.default_root_dir $(RUNS)/pretrain_tiny_lalm_12x32s_if

# The 16 x 32 testbed trained from scratch on a GPU (5 min on one H200 gave 585 steps beside other
# jobs; the committed checkpoint has 672 more, see its card). On a CPU add --trainer.precision 32-true.
tiny-lalm-16x32-gpu: tiny-data ## 16 x 32 heads from scratch, for a GPU (writes checkpoints/tiny_lalm_16x32_gpu)
	$(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_16x32_gpu.yaml

# More training for the under-trained from-scratch model, on the CPU (1200 steps of 24 in 22 min here)
CONTINUE_16X32 := $(BIN)/ahamask fit --config experiments/pretrain_tiny_lalm_16x32_gpu.yaml \
	  --model.init_args.lr 0.0005 --model.init_args.warmup_steps 50 --trainer.precision 32-true \
	  --trainer.max_steps 1200 --trainer.max_time 00:00:38:00 --trainer.limit_val_batches 0 \
	  --data.init_args.batch_size 24 --data.init_args.num_workers 1
tiny-lalm-16x32-gpu-cpu: tiny-data ## continue checkpoints/tiny_lalm_16x32_gpu on the CPU (writes checkpoints/tiny_lalm_16x32_gpu_cpu)
	$(CONTINUE_16X32) --trainer.default_root_dir $(RUNS)/pretrain_16x32_gpu_cpu \
	  --model.init_args.init_from checkpoints/tiny_lalm_16x32_gpu --model.init_args.out_dir checkpoints/tiny_lalm_16x32_gpu_cpu

# The same continuation, but 10 % of every task's examples come without instruction and are trained
# to answer nothing (EOS alone): a silent instruction-free default instead of an emergent transcript
SILENT_IF := '{asr: 0.1, gr: 0.1, src: 0.1, asv: 0.1, aac: 0.1, gr_asr: 0.1, json: 0.1}'
tiny-lalm-16x32-silent: tiny-data ## continue checkpoints/tiny_lalm_16x32_gpu with silent instruction-free examples (writes checkpoints/tiny_lalm_16x32_silent)
	$(CONTINUE_16X32) --trainer.default_root_dir $(RUNS)/pretrain_16x32_silent \
	  --model.init_args.init_from checkpoints/tiny_lalm_16x32_gpu --model.init_args.out_dir checkpoints/tiny_lalm_16x32_silent \
	  --model.init_args.instruction_free $(SILENT_IF) --model.init_args.instruction_free_target ''

tiny-gpu: install ## issue 3's GPU experiments in one ~9-min run (from-scratch 16x32, 12x32s_if table, seeds, long masks)
	OUT=$(RUNS)/tiny_gpu_out RUNS=$(RUNS)/tiny_gpu PY=$(BIN)/python bash experiments/tiny_gpu/run.sh

reproduce-tiny: tiny-data ## the AHAMask table on TinyLALM (4 conditions x tasks), Markdown + CSV + Jaccard map
	$(BIN)/python -m ahamask_lightning.reproduce tiny --data $(DATA) --checkpoint $(TESTBED) --out $(RUNS)/reproduce_tiny

reproduce-table1: install ## SALMONN-13B Table 1 (needs the released weights; says which paths are missing)
	$(BIN)/python -m ahamask_lightning.reproduce table1 --out $(RUNS)/table1

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

bench-smoke: install ## every benchmark in its tiny CPU mode
	$(BIN)/python bench/bench_data.py --smoke

clean:
	rm -rf $(RUNS) lightning_logs
