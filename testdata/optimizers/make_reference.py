"""Records a few steps of each optimizer the trainer offers, as torch and transformers compute them, on a
tiny fixed problem: a 3x4 matrix `w` and a 4-vector `b`, gradients from a fixed formula of the parameters and
the step, a different learning rate at each step, weight decay where the optimizer has it (passed as the
Hugging Face Trainer passes it: in the parameter group). Writes reference.json beside this script.

Run once with torch and transformers installed: python make_reference.py
"""

import json
import math
import os

import torch
import transformers
from transformers.optimization import Adafactor

torch.manual_seed(0)
LRS = [1e-2, 2e-2, 5e-3, 3e-2, 1e-2]
WD = 0.01


def init():
    w = torch.tensor([[math.sin(4 * i + j + 1) * 0.5 for j in range(4)] for i in range(3)], dtype=torch.float32)
    b = torch.tensor([math.cos(j + 1) * 0.3 for j in range(4)], dtype=torch.float32)
    return {"w": w, "b": b}


def grad_of(p, step):
    # Depends on the parameter (so the updates feed back) and on the step; one entry of b is exactly 0.
    n = p.numel()
    k = torch.arange(n, dtype=torch.float32).reshape(p.shape)
    g = 0.5 * p.detach() + torch.sin(1.3 * k + 0.7 * step)
    if p.dim() == 1:
        g[2] = 0.0
    return g


# (case name, trainer setting `optimizer`, class, kwargs as the HF Trainer builds them, weight decay of the group)
CASES = [
    ("adamw", "adamw", torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-8}, WD),
    ("sgd", "sgd", torch.optim.SGD, {}, WD),
    ("sgd_momentum", "sgd", torch.optim.SGD, {"momentum": 0.9}, WD),
    ("sgd_momentum_dampening", "sgd", torch.optim.SGD, {"momentum": 0.9, "dampening": 0.5}, WD),
    ("sgd_nesterov", "sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, 0.0),
    ("adagrad", "adagrad", torch.optim.Adagrad, {}, WD),
    ("adafactor", "adafactor", Adafactor, {"scale_parameter": False, "relative_step": False}, WD),
    ("adafactor_beta1_scaled", "adafactor", Adafactor,
     {"scale_parameter": True, "relative_step": False, "beta1": 0.9, "clip_threshold": 0.5}, 0.0),
]


def run(cls, kwargs, wd):
    params = init()
    tensors = [params["w"].requires_grad_(), params["b"].requires_grad_()]
    opt = cls([{"params": tensors, "weight_decay": wd}], lr=LRS[0], **kwargs)
    steps = []
    for step, lr in enumerate(LRS):
        for group in opt.param_groups:
            group["lr"] = lr
        grads = {}
        for name, p in params.items():
            p.grad = grad_of(p, step)
            grads[name] = p.grad.flatten().tolist()
        opt.step()
        steps.append({"lr": lr, "grads": grads,
                      "params": {n: p.detach().flatten().tolist() for n, p in params.items()}})
    return steps


def main():
    start = init()
    out = {
        "made_by": "make_reference.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "weight_decay": WD,
        "init": {n: {"shape": list(p.shape), "values": p.flatten().tolist()} for n, p in start.items()},
        "cases": [],
    }
    for name, setting, cls, kwargs, wd in CASES:
        out["cases"].append({
            "name": name,
            "optimizer": setting,
            "kwargs": {k: v for k, v in kwargs.items()},
            "weight_decay": wd,
            "steps": run(cls, kwargs, wd),
        })
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
