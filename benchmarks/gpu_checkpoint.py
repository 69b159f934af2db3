"""GPU check of KitCheckpoint's sharded path: async and sync saves under ModelParallelStrategy (FSDP2) with NCCL.

Run: ``python benchmarks/gpu_checkpoint.py --out DIR`` (torchrun over min(2, GPUs) processes; ``--smoke`` runs one
CPU process with gloo instead, to prove the script works without a GPU).

It runs the worker of ``tests/test_checkpoint_async_sharded.py`` (the same checks as that test: async stall
under one slowed shard write, sync stall at least one, folders complete and checksummed, exact resume from the
async checkpoint and equal to a resume from the sync one, a simulated disk-full failure raising on every rank
and leaving the previous checkpoint intact) on CUDA, where the training collectives are NCCL and KitCheckpoint
gives DCP's async write its own gloo group. Prints PASS/FAIL and writes ``gpu_checkpoint.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _test_module():
    # the test imports its helpers from tests/conftest.py, as pytest would let it
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location(
        "async_sharded_test", ROOT / "tests" / "test_checkpoint_async_sharded.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=".", help="folder for gpu_checkpoint.json")
    parser.add_argument("--smoke", action="store_true", help="one CPU process (gloo): no GPU needed")
    a = parser.parse_args(argv)
    test = _test_module()
    # the torchrun workers import the kit from this checkout (gpu_suite.sh lays it out uninstalled)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cuda = torch.cuda.is_available() and not a.smoke
    world = min(2, torch.cuda.device_count()) if cuda else 1
    if not cuda and not a.smoke:
        print("SKIP: no CUDA device (run with --smoke for the CPU path)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = test._run(
            Path(tmp), world, "full" if cuda or world > 1 else "quick", "cuda" if cuda else "cpu"
        )
    record = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)",
        "world": world,
        "ranks": results,
    }
    try:
        test._check(results, world, 0.6 if cuda else 0.35)
        if cuda:
            for res in results:
                assert res["same_as_sync"] and res["resumed_same"], "async and sync checkpoints differ"
                assert min(res["sync_stall"]) >= 0.6, res["sync_stall"]
        record["status"] = "PASS"
    except AssertionError as err:
        record["status"] = f"FAIL: {err}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_checkpoint.json").write_text(json.dumps(record, indent=1))
    for res in results:
        print(f"rank {res['rank']}: async stall {res['async_stall']} s, sync stall {res.get('sync_stall')} s")
    print(f"{record['status']}: async sharded KitCheckpoint on {record['device']} x{world}")
    return 0 if record["status"] == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
