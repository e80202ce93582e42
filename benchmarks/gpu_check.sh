#!/usr/bin/env bash
# One-shot check of weakshot on a machine with one NVIDIA GPU, from the repository root, without network:
#
#     bash benchmarks/gpu_check.sh [RESULTS.json]      # default benchmarks/results/gpu-check.json
#
# Records the GPU, driver and torch; trains a tiny model on a synthetic dataset on CUDA with --amp auto (bf16 where
# the GPU has it) and with --amp fp16, then evaluates and predicts with each checkpoint (--amp auto); runs the
# CUDA-relevant tests; with more than one GPU, pseudo-labels on all of them under torchrun against one (the label
# files must be the same); runs benchmarks/speed.py on CUDA. Everything lands in RESULTS.json, every command's output in
# RESULTS.log. Each step has a time limit, cut further so that the whole ends within 8 minutes; a failing or cut
# step is recorded, not fatal, and the script exits non-zero when any check failed. No weights are downloaded
# (--backbone-weights none throughout). GPU_CHECK_DEVICE=cpu runs the same steps on the CPU, only to try the
# script's plumbing on a machine without a GPU (the fp16 run then fails by design). speed.py needs transformers:
# pip install -e '.[bench]' first.
set -euo pipefail

OUT=${1:-benchmarks/results/gpu-check.json}
LOG=${OUT%.json}.log
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$OUT")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # speed.py builds transformers' MaskFormer from a config only
: > "$LOG"
DEADLINE=$((SECONDS + 465))  # 7 min 45 s for the steps, the rest for a last kill and the summary
STEPS=$WORK/steps.tsv
: > "$STEPS"

# step NAME LIMIT CMD...: run CMD for at most LIMIT seconds (fewer if the deadline is nearer); its output goes to
# the log and to $WORK/NAME.out; NAME, exit code (124: cut by the limit) and seconds go to $STEPS.
step() {
    local name=$1 limit=$2 rc=0 t0=$SECONDS
    shift 2
    local left=$((DEADLINE - SECONDS))
    if ((limit > left)); then limit=$left; fi
    if ((limit < 5)); then
        printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
        echo "== $name: skipped, out of time" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.out" 2>&1 || rc=$?
    cat "$WORK/$name.out" >> "$LOG"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
    echo "== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
}

step nvidia_smi 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step torch_info 60 "$PY" -c '
import json, torch
info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
if info["cuda_available"]:
    info.update(device_name=torch.cuda.get_device_name(0), bf16_supported=torch.cuda.is_bf16_supported(),
                capability=".".join(map(str, torch.cuda.get_device_capability(0))))
print(json.dumps(info))'

# A tiny weak-shot dataset (10 classes; star, ring and brick novel) and a tiny model, as in tests/conftest.py TINY.
step synthetic 60 "$PY" -c "from weakshot_cli.data.synthetic import make_synthetic
make_synthetic('$WORK/synth', 16, 4, 64, 0)"
step split 60 "$PY" -m weakshot_cli split --images "$WORK/synth/images" --masks "$WORK/synth/labels" \
    --classes "$WORK/synth/classes.txt" --novel star,ring,brick -o "$WORK/ws"
TINY=(--preset small --imgsz 64 --batch 4 --iters 20 --workers 0 --backbone-weights none --set hidden_dim=32
      --set mask_dim=32 --set dim_feedforward=64 --set num_queries=8 --set dec_layers=2 --set num_points=256
      --set num_sim_points=16 --set sim_class_points=12 --set num_dist_points=16 --set log_every=1
      --set val_imgsz=64)
for amp in auto fp16; do
    step "train_$amp" 120 "$PY" -m weakshot_cli train "$WORK/ws" "${TINY[@]}" --device "$DEVICE" --amp "$amp" \
        --project "$WORK/runs" --name "amp-$amp"
    ckpt=$WORK/runs/train/amp-$amp/weights/last.pt
    step "evaluate_$amp" 60 "$PY" -m weakshot_cli evaluate "$ckpt" "$WORK/ws" --device "$DEVICE" --amp auto \
        --project "$WORK/runs" --name "amp-$amp"
    step "predict_$amp" 60 "$PY" -m weakshot_cli predict "$ckpt" "$WORK/synth/images/val" --device "$DEVICE" \
        --amp auto --project "$WORK/runs" --name "amp-$amp"
done

# More than one GPU visible: pseudo-label on all of them under torchrun against one, same files expected.
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [[ "$DEVICE" == cuda && "$GPUS" -gt 1 ]]; then
    ckpt=$WORK/runs/train/amp-auto/weights/last.pt
    step pseudolabel_1gpu 90 "$PY" -m weakshot_cli pseudolabel "$ckpt" "$WORK/ws" -o "$WORK/pl-1" --device cuda \
        --amp off
    step pseudolabel_all_gpus 90 "$(dirname "$PY")/torchrun" --nproc-per-node "$GPUS" -m weakshot_cli pseudolabel \
        "$ckpt" "$WORK/ws" -o "$WORK/pl-all" --device cuda --amp off
    step pseudolabel_same_files 20 diff -r -x .weakshot -x .pseudolabel-state.json -x weakshot.json \
        "$WORK/pl-1/labels" "$WORK/pl-all/labels"
fi

step pytest 150 "$PY" -m pytest -q -x -p no:cacheprovider -m "not slow" tests/test_train.py tests/test_evaluate.py \
    tests/test_predict.py tests/test_models.py
step speed 600 "$PY" benchmarks/speed.py --device "$DEVICE" --no-throughput --repeats 5 --out "$WORK/speed"

# Everything into one JSON file; exit 1 when any check failed.
WORK=$WORK OUT=$OUT LOG=$LOG "$PY" - <<'EOF'
import json, math, os, re, sys, time
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUT"])
steps = {}
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps[name] = {"rc": None if rc == "skipped" else int(rc), "seconds": int(seconds), "not_run": rc == "skipped",
                   "timed_out": rc in ("124", "137")}


def finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def read(path, parse=json.loads, default=None):
    return parse(path.read_text(errors="replace")) if path.exists() else default


def text(name):
    return read(work / f"{name}.out", str, "")


def train_summary(amp):
    run = work / "runs" / "train" / f"amp-{amp}"
    records = read(run / "metrics.jsonl", lambda t: [json.loads(line) for line in t.splitlines()], [])
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    losses = {k: v for k, v in train[-1].items() if k.startswith("loss")} if train else {}
    config = read(run / "config.json", default={})
    return {"amp_config": config.get("amp"), "iters_logged": len(train), "final_losses": losses,
            "final_losses_finite": bool(losses) and all(map(finite, losses.values())),
            "nonfinite_loss_iters": sum(not finite(r.get("loss")) for r in train),
            "val_mIoU": val[-1].get("mIoU") if val else None}


def evaluate_summary(amp):
    return {"mIoU": read(work / "runs" / "evaluate" / f"amp-{amp}" / "metrics.json", default={}).get("mIoU")}


def predict_summary(amp):
    labels = work / "runs" / "predict" / f"amp-{amp}" / "labels"
    return {"labels_written": len(list(labels.glob("*.png"))) if labels.is_dir() else 0}


def pytest_summary():
    """Counts from pytest's last summary line (none when it was cut before printing one)."""
    lines = [line for line in text("pytest").splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    summary = lines[-1].strip("= ") if lines else None
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped", "deselected", "xfailed", "xpassed")}
    for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", summary or ""):
        counts["errors" if kind.startswith("error") else kind] = int(n)
    return {**counts, "summary": summary}


torch_info = text("torch_info").strip().splitlines()
speed_files = sorted((work / "speed").glob("speed*.json"))
result = {
    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    "nvidia_smi": text("nvidia_smi").strip() or None,
    "torch": json.loads(torch_info[-1]) if torch_info and torch_info[-1].startswith("{") else None,
    "steps": steps,
    "pytest": {**steps.get("pytest", {}), **pytest_summary()},
    "train": {amp: {**steps.get(f"train_{amp}", {}), **train_summary(amp)} for amp in ("auto", "fp16")},
    "evaluate": {amp: {**steps.get(f"evaluate_{amp}", {}), **evaluate_summary(amp)} for amp in ("auto", "fp16")},
    "predict": {amp: {**steps.get(f"predict_{amp}", {}), **predict_summary(amp)} for amp in ("auto", "fp16")},
    "speed": json.loads(speed_files[0].read_text()) if speed_files else None,
    "log": os.environ["LOG"],
}
failed = [n for n, s in steps.items() if s["rc"] != 0]
failed += [f"train_{amp} losses" for amp, t in result["train"].items() if not t["final_losses_finite"]]
failed += [f"predict_{amp} labels" for amp, p in result["predict"].items() if p["labels_written"] == 0]
result["ok"], result["failed"] = not failed, failed
out.write_text(json.dumps(result, indent=2))
print(f"{out}: {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
sys.exit(1 if failed else 0)
EOF
