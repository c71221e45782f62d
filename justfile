# Recipes take `key=value` overrides of any config field, e.g. `just extract batch_size=8`.
# Arguments reach the commands intact ("$@"): spaces, non-ASCII characters and flags included.
set positional-arguments

export HF_HUB_OFFLINE := "1"
export TOKENIZERS_PARALLELISM := "false"

default:
    @just --list

# extract -> train-pretrain -> train-sft on the embedded default (bundled sample, tiny models)
demo: extract train-pretrain train-sft

# fill the feature cache (default: embedded sample into ./cache); config=configs/extract/llava558k.yaml for the real run
extract *args:
    @python -m pipeline.cli extract "$@"

# stage 1: projector only, LLM frozen
train-pretrain *args:
    @python -m train.cli pretrain "$@"

# stage 2: LLM + projector, question-conditioned SD features on the fly
train-sft *args:
    @python -m train.cli sft "$@"

# list cache stores under a cache root (default ./cache)
caches *args:
    @python -m pipeline.cli caches "$@"

# check every shard of a store, naming the fix; non-zero exit on any problem (flags: --allow-incomplete, --repair, --no-progress)
verify store *flags:
    @python -m pipeline.cli verify "$@"

test *args:
    @python -m pytest -q tests "$@"

bench: bench-extract bench-store bench-train

bench-extract:
    python -m benchmarks.bench_extract
    python -m benchmarks.bench_pipeline

bench-store:
    python -m benchmarks.bench_store

bench-train:
    python -m benchmarks.bench_train
