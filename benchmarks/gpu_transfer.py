"""GPU run of the transfer benchmark: every fine-tuning method on one GPU, with measured peak memory
(``torch.cuda.max_memory_allocated``) and step times, plus checks that QLoRA's NF4 layers and bitsandbytes'
8-bit AdamW run on CUDA and agree with their CPU results.

Usage: ``python benchmarks/gpu_transfer.py --out DIR`` (about 4 minutes on one H100/H200); ``--smoke`` runs a
seconds-long version on any device (the CPU smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.__main__ import to_markdown
from benchmarks.transfer import main as transfer_main


def bnb_checks() -> dict[str, object]:
    """NF4 forward/backward and one 8-bit AdamW step on the GPU, compared with the same ops on the CPU."""
    import bitsandbytes as bnb

    from kit.nn import GPT, GPTConfig
    from kit.nn.peft import PeftConfig, apply_peft

    out: dict[str, object] = {"bitsandbytes": bnb.__version__}
    torch.manual_seed(0)
    cfg = GPTConfig.from_name("debug", causal=False, n_embd=128, n_head=4)
    x = torch.randint(0, 64, (2, 16))
    logits = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = apply_peft(GPT(cfg), PeftConfig(method="qlora", lora_r=4)).to(device)
        y = model(x.to(device))
        y.float().pow(2).mean().backward()
        logits[device] = y.detach().float().cpu()
        out[f"qlora fwd+bwd {device}"] = all(
            p.grad is not None for p in model.parameters() if p.requires_grad
        )
    out["qlora cpu vs cuda max |diff|"] = float((logits["cpu"] - logits["cuda"]).abs().max())
    p = torch.nn.Parameter(torch.randn(8192, device="cuda"))
    p.grad = torch.randn_like(p)
    opt = bnb.optim.AdamW8bit([p], lr=1e-3)
    opt.step()
    out["adamw8bit state dtype"] = str(opt.state[p]["state1"].dtype)
    return out


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kit-gpu-transfer"))
    parser.add_argument("--smoke", action="store_true")
    a, rest = parser.parse_known_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    checks = bnb_checks() if torch.cuda.is_available() else {"cuda": False}
    result = transfer_main(
        [
            *(["--smoke"] if a.smoke else []),
            "--workdir",
            str(a.out / "work"),
            "--png",
            str(a.out / "transfer-gpu.png"),
            *rest,
        ]
    )
    result["notes"].append(f"bitsandbytes on this device: {checks}")
    failed = [k for k, v in checks.items() if v is False and k != "cuda"]
    result["failed"] = failed
    (a.out / "transfer-gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.out / "transfer-gpu.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    raise SystemExit(1 if main(sys.argv[1:])["failed"] else 0)
