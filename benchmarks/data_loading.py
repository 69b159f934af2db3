"""Data-loading wait as a share of a training step, per input path, measured in one run.

A tiny GPT (``kit.models.gpt``, 2 layers, width 64, T=32) trains for ``--steps`` steps from each source; for
every step we time ``next(batch)`` (the wait) and forward + backward + optimizer step. Sources: token blocks
in memory (baseline), the same blocks through ``TemperatureSampler``, webdataset shards read by
``WebDataModule`` in the main process, and with 2 workers.

Run: ``python -m benchmarks data_loading [--steps 60]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kit.data.packing import pack_blocks
from kit.data.sampling import TemperatureSampler
from kit.data.shards import write_shards
from kit.data.text import embedded_corpus
from kit.data.tokenizer import train_bpe
from kit.datamodules.webdataset import WebDataModule
from kit.nn import GPT, GPTConfig

BLOCK, BATCH = 32, 16


def _measure(loader, steps: int, vocab: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig.from_name("tiny", vocab_size=vocab, block_size=BLOCK, n_layer=2, n_embd=64, n_head=4)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wait = compute = 0.0
    done = 0
    while done < steps + 3:
        it = iter(loader)
        while done < steps + 3:
            t0 = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            if done >= 3:  # warm-up steps (worker start, allocator) excluded
                wait += t1 - t0
                compute += t2 - t1
            done += 1
    return {
        "wait_ms": 1e3 * wait / steps,
        "step_ms": 1e3 * (wait + compute) / steps,
        "wait_share_pct": 100 * wait / (wait + compute),
    }


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks data_loading")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; one thread keeps runs comparable

    topics = embedded_corpus()
    tok = train_bpe(list(topics.values()), vocab_size=2000)
    ids = [tok.encode(t).ids for t in topics.values()]
    blocks = pack_blocks(ids, BLOCK)  # (N, BLOCK + 1), rows overlap by one token
    # which topic each block came from, for the temperature sampler
    lengths = np.cumsum([len(i) for i in ids])
    group = np.searchsorted(lengths, np.arange(len(blocks)) * BLOCK, side="right").tolist()
    vocab = tok.get_vocab_size()

    ds = TensorDataset(blocks[:, :-1].long(), blocks[:, 1:].long())
    rows = []
    sources = {
        "in-memory blocks, shuffle (baseline)": DataLoader(
            ds, batch_size=BATCH, shuffle=True, drop_last=True
        ),
        "in-memory blocks, TemperatureSampler T=3 over 79 topics": DataLoader(
            ds, batch_size=BATCH, sampler=TemperatureSampler(group, temperature=3.0), drop_last=True
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        samples = (
            {"__key__": f"{i:07d}", "input_ids.npy": b.numpy().astype(np.int32)} for i, b in enumerate(blocks)
        )
        shards = write_shards(samples, os.path.join(tmp, "train-%04d.tar"), max_count=1000)
        sources["webdataset shards, main process"] = WebDataModule(
            shards, batch_size=BATCH
        ).train_dataloader()
        sources["webdataset shards, 2 workers"] = WebDataModule(
            shards, batch_size=BATCH, num_workers=2
        ).train_dataloader()
        base = None
        for name, loader in sources.items():
            m = _measure(loader, args.steps, vocab)
            base = base or m["step_ms"]
            rows.append(
                {
                    "source": name,
                    **{k: round(v, 2) for k, v in m.items()},
                    "step vs baseline": round(m["step_ms"] / base, 2),
                }
            )
    return {
        "title": "Data-loading wait as a share of a training step (tiny GPT, CPU)",
        "device": f"CPU ({platform.machine()}), torch threads=1",
        "rows": rows,
        "notes": [
            f"model: GPT 2 layers x 64 wide, T={BLOCK}, batch {BATCH}, vocab {vocab}; {args.steps} timed steps after 3 warm-up",
            f"{len(blocks)} token blocks from the embedded corpus; {len(shards)} shards of up to 1000 samples",
            "wait = time in next(loader); on a GPU the step shrinks, so the same wait becomes a larger share",
        ],
    }
