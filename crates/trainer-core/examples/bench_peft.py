"""PyTorch + PEFT counterpart of `bench_train` (not a test; needs torch, transformers and peft).

Trains the same LoRA on the same 4 x 256-token windows as `bench_train` and prints its figures in the same
format, so that `bench_side_by_side.sh` can run both alternately and compare them:

    python3 bench_peft.py HF_MODEL_DIR [qv|all] [steps]

HF_MODEL_DIR is a Hugging Face folder made from the GGUF by `trainer-cli convert`. Settings: float32, SDPA
attention, frozen base, LoRA r=8 alpha=16 dropout 0, AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, no weight
decay), global-norm clipping 1.0, one warm-up step and `steps` measured steps, 2 threads (set the thread count
with TORCH_THREADS).
"""

import os
import resource
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux: the same high-water mark as VmHWM, which bench_train reads.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: bench_peft.py HF_MODEL_DIR [qv|all] [steps]")
    model_dir = sys.argv[1]
    targets = sys.argv[2] if len(sys.argv) > 2 else "qv"
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    threads = int(os.environ.get("TORCH_THREADS", "2"))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    root = Path(__file__).resolve().parent.parent.parent.parent

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    modules = ALL7 if targets == "all" else ["q_proj", "v_proj"]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mb()

    # The same text and windows as bench_train: the first 200,000 bytes, no special tokens.
    raw = (root / "testdata/kjv-books-1mb.txt").read_bytes()[:200_000]
    ids = tok(raw.decode("utf-8"), add_special_tokens=False)["input_ids"]
    batch, seq = 4, 256
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    times, cpu = [], []
    for s in range(steps + 1):
        rows = []
        for b in range(batch):
            start = ((s * batch + b) * seq) % (len(ids) - seq)
            rows.append(ids[start : start + seq])
        x = torch.tensor(rows, dtype=torch.long)
        t, c = time.perf_counter(), time.process_time()
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        warm = " (warm-up)" if s == 0 else ""
        print(f"step {s}{warm}: loss {out.loss.item():.4f} {dt:.2f} s wall, {dc:.2f} s cpu", flush=True)
        if s > 0:
            times.append(dt)
            cpu.append(dc)

    times.sort()
    cpu.sort()
    median, best = times[len(times) // 2], times[0]
    print(
        f"targets={targets} torch={torch.__version__} threads={threads} batch={batch}x{seq} r=8 "
        f"trainable={trainable} load={load_s:.2f}s rss_after_load={rss_after_load:.0f}MB"
    )
    print(f"cpu_s_per_step_median={cpu[len(cpu) // 2]:.2f}")
    print(
        f"RESULT s_per_step_median={median:.3f} tokens_per_s_median={batch * seq / median:.1f} "
        f"s_per_step_best={best:.3f} tokens_per_s_best={batch * seq / best:.1f} peak_rss_mb={peak_rss_mb():.0f}"
    )


if __name__ == "__main__":
    main()
