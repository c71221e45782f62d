# Recipes take `key=value` overrides of any config field, e.g. `just extract batch_size=8`.
# Arguments reach the commands intact ("$@"): spaces, non-ASCII characters and flags included.
set positional-arguments

export HF_HUB_OFFLINE := "1"
export TOKENIZERS_PARALLELISM := "false"

default:
    @just --list

# extract -> train-pretrain -> train-sft -> eval on the embedded default (bundled sample, tiny models), ending with the table
demo: system-packages extract train-pretrain train-sft eval-extract eval (eval-table "runs/sample-sft")

# fill the feature cache (default: embedded sample into ./cache); config=configs/extract/llava558k.yaml for the real run
extract *args:
    @python -m pipeline.cli extract "$@"

# stage 1: projector only, LLM frozen
train-pretrain *args:
    @python -m train.cli pretrain "$@"

# stage 2: LLM + projector, question-conditioned SD features on the fly
train-sft *args:
    @python -m train.cli sft "$@"

# train on N ranks of this machine with torchrun (gloo on CPU, NCCL on GPUs): `just train-ranks 2 pretrain max_steps=4`
train-ranks n stage *args:
    #!/usr/bin/env bash
    set -euo pipefail
    shift 2
    exec torchrun --standalone --nproc_per_node "{{n}}" -m train.cli "{{stage}}" "$@"

# answer and score the paper's benchmarks for a trained run (default: runs/sample-sft on the embedded fixtures)
eval *args:
    @python -m llava_eval.cli eval "$@"

# cache the benchmark images a run's evaluation needs: `just extract` with each line `llava_eval.cli export` prints
eval-extract *args:
    #!/usr/bin/env bash
    set -euo pipefail
    python -m llava_eval.cli export "$@" | while IFS= read -r line; do eval "python -m pipeline.cli extract $line"; done

# compare runs' evaluations in the paper's Table 2 / Table 5 layouts (markdown + CSV; --out PREFIX)
eval-table *args:
    @python -m llava_eval.cli table "$@"

# LLaVA-Bench relative scores per category from judge review files (no judge runs here)
llava-bench-score *args:
    @python -m llava_eval.cli llava-bench-score "$@"

# an experiment grid: extraction once per store, then each run's pretrain -> sft -> eval (--dry-run: the plan; --ray-address ADDR: on a Ray cluster)
sweep sweep *args:
    @python -m llava_sweep.cli sweep "$@"

# the paper's tables and figures from a sweep's results (markdown, CSV, PNG under the sweep's root)
sweep-report sweep *args:
    @python -m llava_sweep.cli report "$@"

# the paper's feature analyses: itm | pca | pairs | attention | cka, files under runs/analysis/ (docs/analysis.md)
analyze *args:
    @python -m analysis.cli "$@"

# one static HTML report gathering the analyses: runs/analysis/inspect/index.html (sweeps=[DIR,...]: sweep reports too)
inspect *args:
    @python -m analysis.cli inspect "$@"

# list cache stores under a cache root (default ./cache)
caches *args:
    @python -m pipeline.cli caches "$@"

# check every shard of a store, naming the fix; non-zero exit on any problem (flags: --allow-incomplete, --repair, --no-progress)
verify store *flags:
    @python -m pipeline.cli verify "$@"

# the test suite
test *args: system-packages
    @python -m pytest -q --durations=20 tests "$@"

# re-resolve requirements.lock keeping other pins (--upgrade: newest allowed; --upgrade-package NAME: one); then test-latest
lock *args:
    CUSTOM_COMPILE_COMMAND="just lock" pip-compile -q --generate-hashes --allow-unsafe --extra dev --strip-extras \
        --no-emit-index-url --no-emit-find-links -c lock-constraints.txt -o requirements.lock "$@" pyproject.toml

lmms_eval := "lmms-eval==0.7.3"  # the release llava_eval.lmms_adapter is tested with

# re-resolve requirements-lmms.lock: lmms-eval (installed without its dependencies) and requirements-lmms.in,
# each package requirements.lock pins left out (the venv has it) and the rest pinned as it pins them
lock-lmms:
    #!/usr/bin/env bash
    set -euo pipefail
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    sed -nE 's/^([A-Za-z0-9_.-]+==[^ ]+).*/\1/p' requirements.lock | grep -v '^filelock==' > "$tmp/venv.txt"
    CUSTOM_COMPILE_COMMAND="just lock-lmms" pip-compile -q --generate-hashes --strip-extras --no-emit-index-url \
        --no-emit-find-links -c "$tmp/venv.txt" $(sed -E 's/==.*//; s/^/--unsafe-package /' "$tmp/venv.txt") \
        -o requirements-lmms.lock requirements-lmms.in
    pip download -q --no-deps --only-binary :all: -d "$tmp/wheel" "{{lmms_eval}}"
    printf '%s \\\n    --hash=sha256:%s\n    # without its dependencies: the lines above are those used\n' \
        "{{lmms_eval}}" "$(sha256sum "$tmp"/wheel/*.whl | cut -c1-64)" >> requirements-lmms.lock

# lmms-eval with the `dfc_llava` model (docs/evaluation.md); runs in the invoking folder, where local datasets may lie
[no-cd]
lmms-eval *args:
    @PYTHONPATH="{{justfile_directory()}}/.venv/lmms${PYTHONPATH:+:$PYTHONPATH}" python -m lmms_eval eval "$@"

# drift check: the suite in a throwaway venv with the newest releases pyproject.toml allows, embedded models rebuilt
test-latest *args: system-packages
    #!/usr/bin/env bash
    set -euo pipefail
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install -q --upgrade pip
    "$tmp/venv/bin/pip" install -q --upgrade-strategy eager -c lock-constraints.txt -e '.[dev]'
    # name==version, lower case; pip's own tools left out (pip freeze leaves them out too)
    normal() { sed -nE 's/^([A-Za-z0-9_.-]+)==([^ ]+).*/\1==\2/p' | tr 'A-Z_' 'a-z-' | grep -vE '^(pip|setuptools|wheel)==' | sort; }
    normal < requirements.lock > "$tmp/locked"
    "$tmp/venv/bin/pip" freeze --exclude-editable | normal > "$tmp/latest"
    echo "newest allowed releases that differ from requirements.lock (< locked, > newest):"
    { diff "$tmp/locked" "$tmp/latest" || true; } | grep '^[<>]' || echo "  none"
    export PATH="$tmp/venv/bin:$PATH" TORCH_EXTENSIONS_DIR="$tmp/venv/torch-extensions" DFC_EMBEDDED_HOME="$tmp/embedded"
    python -m pytest -q --durations=20 tests "$@"

# Debian packages the tests and metrics need: Java (COCO's METEOR and tokenizer) and Chromium (the report's browser test)
system-packages:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v java >/dev/null || missing+=(default-jre-headless)
    command -v chromium >/dev/null || missing+=(chromium)
    if [ ${#missing[@]} -gt 0 ]; then
      sudo=$([ "$(id -u)" = 0 ] || echo sudo)
      $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi

bench: bench-extract bench-store bench-train bench-eval bench-analyze bench-decode bench-sweep bench-gpu

bench-extract:
    python -m benchmarks.bench_extract
    python -m benchmarks.bench_pipeline

bench-store:
    python -m benchmarks.bench_store

bench-train:
    python -m benchmarks.bench_train

# generated tokens/s of `just eval` vs Hugging Face generate, and the diffusion GFLOP per eval question
bench-eval:
    python -m benchmarks.bench_eval

# ITM U-Net GFLOP with early exit vs full, the VAE share cached latents save, CKA throughput from a store
bench-analyze:
    python -m benchmarks.bench_analyze

# images decoded + resized per second per CPU core (sizes the CPU side of `just extract --dry-run`)
bench-decode:
    python -m benchmarks.bench_decode

# images/s of extraction (SD 2.1-base, SDXL) and tokens/s of a 7B-shaped LLM step per batch size vs the GPU's bf16
# peak; full size in bf16 on CUDA, the embedded tiny models on CPU (--budget-s 300 --out DIR for a timed GPU lease)
bench-gpu *args:
    python -m benchmarks.bench_gpu "$@"

# the sample sweep's wall time (extraction + training, from an empty cache) against the same stages on the fly
bench-sweep:
    python -m benchmarks.bench_sweep
