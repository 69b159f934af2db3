"""Transfer learning: BERT masking and NSP pairs, the 13-gram-clean topic task, init_from, and the PEFT methods
(LoRA, QLoRA, Houlsby adapters, prompt tuning) with their cost report."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kit.data.masking import IGNORE_INDEX, bert_mask, nsp_pair
from kit.data.passages import split_passages, subsample
from kit.models.gpt import CausalLM
from kit.models.masked_lm import MaskedLM
from kit.models.sequence_classifier import SequenceClassifier, load_backbone, resolve_init_from
from kit.nn import GPT, GPTConfig
from kit.nn.peft import (
    PeftConfig,
    adapter_state_dict,
    apply_peft,
    cost_report,
    load_adapter_state_dict,
    measured_optimizer_state_bytes,
    merge_lora,
    optimizer_state_bytes,
)

SPECIAL = [0, 1, 2]  # PAD, CLS, SEP in these tests
MASK = 3


# -- masking and pairs --------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(4, 40))
def test_bert_mask_never_touches_specials_and_labels_exactly_the_changed_or_kept_targets(seed, B, T) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 50, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    ids[0, T // 2] = 0
    inputs, labels = bert_mask(ids, MASK, 50, SPECIAL, generator=g, p=0.5)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.equal(inputs[special], ids[special]) and (labels[special] == IGNORE_INDEX).all()
    target = labels != IGNORE_INDEX
    assert torch.equal(labels[target], ids[target])
    assert torch.equal(inputs[~target], ids[~target])  # only targets are corrupted
    assert not torch.isin(
        inputs[target & (inputs != MASK)], torch.tensor(SPECIAL)
    ).any()  # random ids are ordinary


def test_bert_mask_rates_are_15_percent_then_80_10_10() -> None:
    ids = torch.randint(4, 1000, (400, 250), generator=torch.Generator().manual_seed(0))
    inputs, labels = bert_mask(ids, MASK, 1000, SPECIAL, generator=torch.Generator().manual_seed(1))
    target = labels != IGNORE_INDEX
    n = target.sum().item()
    assert abs(n / ids.numel() - 0.15) < 0.005
    masked = (inputs[target] == MASK).sum().item() / n
    kept = (
        inputs[target] == ids[target]
    ).sum().item() / n  # a random draw equal to the original counts as kept
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01


def test_nsp_pairs_are_half_true_next_half_other_document() -> None:
    docs = [[[d * 100 + i] for i in range(20)] for d in range(5)]  # segment i of doc d is [d*100 + i]
    rng = random.Random(0)
    labels = []
    for _ in range(4000):
        d, i = rng.randrange(5), rng.randrange(19)
        a, b, is_next = nsp_pair(docs, d, i, rng)
        assert a == [d * 100 + i]
        assert (b == [d * 100 + i + 1]) if is_next else (b[0] // 100 != d)
        labels.append(is_next)
    assert abs(sum(labels) / len(labels) - 0.5) < 0.03
    with pytest.raises(ValueError, match=">= 2 documents"):
        nsp_pair(docs[:1], 0, 0, rng)


# -- the labelled task --------------------------------------------------------------------------------------
def _grams(text: str, n: int = 13) -> set[tuple[str, ...]]:  # independent of the code under test
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_topic_split_of_the_embedded_corpus_shares_no_13gram_between_train_and_test() -> None:
    from kit.data.text import load_texts
    from kit.datamodules.transfer import DEFAULT_TOPICS

    docs, _ = load_texts(None)
    task = split_passages(docs, DEFAULT_TOPICS, passage_words=48, test_fraction=0.2, seed=0)
    test_grams = set().union(*(_grams(p) for p, _ in task.test))
    for p, _ in task.train + [(p, 0) for p, _ in task.unlabelled]:
        assert not _grams(p) & test_grams
    assert task.dropped > 0  # the rule bites on this corpus (repeated boilerplate between topics)
    assert {y for _, y in task.test} == set(range(len(DEFAULT_TOPICS)))
    few = subsample(task.train, 0.001)
    assert sorted({y for _, y in few}) == list(range(len(DEFAULT_TOPICS)))  # every class kept at 0.1%
    with pytest.raises(ValueError, match="not topics of the corpus"):
        split_passages(docs, ["no-such-topic"])


# -- PEFT methods on the backbone --------------------------------------------------------------------------
def _gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name("debug", causal=False, **kw))


def _train(model: nn.Module, steps: int = 4, lr: float = 0.05) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randint(0, 64, (4, 12), generator=g)
        logits = model(x)[:, -x.size(1) :]  # a soft prompt adds positions in front
        loss = F.cross_entropy(logits.flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


EXPECTED = {  # the only parameter names (substrings) that may train, per method
    "lora": ("lora_A", "lora_B"),
    "qlora": ("lora_A", "lora_B"),
    "adapters": ("adapter_attn", "adapter_ffn"),
    "prompt": ("soft_prompt",),
}


@pytest.mark.parametrize("method", ["lora", "qlora", "adapters", "prompt"])
def test_frozen_parameters_are_bitwise_unchanged_and_only_the_method_gets_gradients(method) -> None:
    model = apply_peft(_gpt(), PeftConfig(method=method, lora_r=2, adapter_size=4, prompt_tokens=3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(k in n for k in EXPECTED[method]) for n in trainable), trainable
    if method == "prompt":
        assert trainable == {"soft_prompt.embedding"}
    _train(model)
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.grad is not None and not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
            assert torch.equal(p, before[n]), f"frozen {n} changed"


def test_lora_is_peft_with_configurable_rank_alpha_dropout_targets() -> None:
    from peft.tuners.lora import LoraLayer

    cfg = PeftConfig(method="lora", lora_r=3, lora_alpha=12, lora_dropout=0.1, lora_targets=["qkv"])
    model = apply_peft(_gpt(), cfg)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2  # one qkv per block, nothing else
    assert layers[0].r["default"] == 3 and layers[0].scaling["default"] == 4.0
    assert layers[0].lora_dropout["default"].p == 0.1
    with pytest.raises(ValueError, match="match no Linear.*'qkv'"):
        apply_peft(_gpt(), PeftConfig(method="lora", lora_targets=["query"]))


def test_lora_merged_output_equals_unmerged() -> None:
    model = apply_peft(_gpt(), PeftConfig(method="lora", lora_r=4))
    _train(model)  # so B != 0 and the merge has something to fold in
    model.eval()
    x = torch.randint(0, 64, (3, 16))
    with torch.no_grad():
        unmerged = model(x)
        merged_model = merge_lora(model)
        merged = merged_model(x)
    assert type(merged_model) is GPT and not any("lora" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)


def test_qlora_base_weights_are_4bit_nf4_and_the_output_stays_close() -> None:
    import bitsandbytes as bnb

    ref = _gpt()
    model = apply_peft(_gpt(), PeftConfig(method="qlora", lora_r=2))
    quant = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quant) == 8 and all(
        m.weight.quant_type == "nf4" for m in quant
    )  # qkv, proj, fc, proj x 2 blocks
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        err = (model(x) - ref(x)).abs().max() / ref(x).abs().max()
    assert err < 0.1  # 4-bit rounding of the weights, not a different model


@pytest.mark.parametrize("method", ["lora", "adapters", "prompt"])
def test_adapter_only_checkpoint_round_trips_and_is_much_smaller(method, tmp_path) -> None:
    cfg = PeftConfig(method=method, lora_r=2, adapter_size=4, prompt_tokens=4)
    config = dict(n_embd=64, n_head=2, n_layer=2, vocab_size=512)
    model = apply_peft(_gpt(0, **config), cfg)
    _train(model)
    path = tmp_path / "adapter.pt"
    torch.save(adapter_state_dict(model), path)
    full = tmp_path / "full.pt"
    torch.save(model.state_dict(), full)
    assert path.stat().st_size * 10 < full.stat().st_size
    fresh = apply_peft(_gpt(0, **config), cfg)  # same backbone (seed), fresh method parameters
    load_adapter_state_dict(fresh, torch.load(path))
    x = torch.randint(0, 512, (2, 16))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state_dict(apply_peft(_gpt(0, **config), cfg), {})


def test_adapters_start_as_the_identity_and_sit_after_attention_and_ffn() -> None:
    base = _gpt()
    model = apply_peft(_gpt(), PeftConfig(method="adapters", adapter_positions=["ffn"]))
    assert hasattr(model.blocks[0], "adapter_ffn") and not hasattr(model.blocks[0], "adapter_attn")
    x = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(model(x), base(x))  # zero-initialised up-projection
    assert set(base.state_dict()) <= set(
        model.state_dict()
    )  # backbone keys unchanged: checkpoints still load


def test_prompt_is_initialised_from_vocabulary_rows_and_prepended() -> None:
    model = apply_peft(_gpt(), PeftConfig(method="prompt", prompt_tokens=5, seed=3))
    rows = [(model.wte.weight == e).all(-1).nonzero() for e in model.soft_prompt.embedding]
    assert all(r.numel() >= 1 for r in rows)  # each prompt vector is a copy of some token embedding
    assert model.hidden_states(torch.randint(0, 64, (2, 8))).shape == (2, 13, 32)


# -- cost report --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_predicted_optimizer_state_matches_what_the_optimizer_holds(optimizer) -> None:
    import bitsandbytes as bnb

    model = apply_peft(_gpt(0, n_embd=64, n_head=2), PeftConfig(method="lora", lora_r=8))
    params = [p for p in model.parameters() if p.requires_grad]
    big = nn.Parameter(torch.randn(64, 128))  # >= 4096 values: 8-bit state for bitsandbytes
    params.append(big)
    cls = bnb.optim.AdamW8bit if optimizer == "adamw8bit" else torch.optim.AdamW
    opt = cls(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert optimizer_state_bytes(params, optimizer) == measured_optimizer_state_bytes(opt)


def test_cost_report_counts_trainable_share_and_checkpoint_bytes() -> None:
    full = cost_report(_gpt())
    assert full["trainable_pct"] == 100.0 and full["checkpoint_bytes"] == pytest.approx(
        full["full_checkpoint_bytes"], rel=0.05
    )
    prompt = cost_report(apply_peft(_gpt(), PeftConfig(method="prompt", prompt_tokens=4)))
    assert prompt["trainable_params"] == 4 * 32
    assert prompt["optimizer_state_bytes"] == 2 * 4 * 32 * 4 + 4
    q = cost_report(apply_peft(_gpt(), PeftConfig(method="qlora", lora_r=2)))
    assert q["total_params"] > full["total_params"]  # 4-bit weights counted at their logical size, + LoRA
    assert q["weight_bytes"] < full["weight_bytes"]


# -- init_from ----------------------------------------------------------------------------------------------
def _pretrain_ckpt(tmp_path, cls=MaskedLM, **kw):
    cfg = GPTConfig.from_name("debug", causal=cls is CausalLM)
    module = cls(cfg, **kw)
    path = tmp_path / f"{cls.__name__}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return module, path


@pytest.mark.parametrize("cls", [MaskedLM, CausalLM])
def test_init_from_loads_either_objective_and_reports_missing_and_unexpected_keys(cls, tmp_path) -> None:
    src, path = _pretrain_ckpt(tmp_path, cls, **({"nsp": True} if cls is MaskedLM else {}))
    clf = SequenceClassifier(init_from=str(path), num_classes=3)
    assert clf.config.causal == (cls is CausalLM)  # the config comes from the checkpoint
    for (n, a), b in zip(src.model.state_dict().items(), clf.model.state_dict().values()):
        assert torch.equal(a, b), n
    assert clf.load_report["missing"] == []
    expected_unexpected = {"nsp_head.weight", "nsp_head.bias", "pooler.0.weight", "pooler.0.bias"}
    assert set(clf.load_report["unexpected"]) == (expected_unexpected if cls is MaskedLM else set())
    partial = {"state_dict": {k: v for k, v in src.state_dict().items() if "blocks.1." not in k}}
    missing, _ = load_backbone(GPT(src.config), partial)
    assert missing and all(k.startswith("blocks.1.") for k in missing)


def test_init_from_refuses_a_shape_mismatch_naming_the_parameter_and_both_shapes(tmp_path) -> None:
    _, path = _pretrain_ckpt(tmp_path)
    wider = GPTConfig.from_name("debug", causal=False, n_embd=48)
    with pytest.raises(
        ValueError, match=r"'wte.weight' has shape \(64, 32\) in the checkpoint but \(64, 48\)"
    ):
        SequenceClassifier(wider, init_from=str(path), num_classes=3)
    with pytest.raises(FileNotFoundError, match="init_from"):
        SequenceClassifier(init_from=str(tmp_path / "nope.ckpt"), num_classes=3)


def test_init_from_resolves_a_run_folder_or_a_recipe_name_to_the_newest_complete_checkpoint(
    tmp_path, monkeypatch
) -> None:
    import os

    from kit.checkpoint import Manifest

    src, _ = _pretrain_ckpt(tmp_path)
    runs = tmp_path / "runs/bert-tiny-pretrain"
    paths = []
    for version in (0, 1):  # two runs of the recipe, each in its own version folder; version 1 is newer
        folder = runs / f"version_{version}/checkpoints"
        folder.mkdir(parents=True)
        path = folder / "last.ckpt"
        torch.save({"state_dict": src.state_dict(), "hyper_parameters": dict(src.hparams)}, path)
        os.utime(path, (1_000 + version, 1_000 + version))
        paths.append(path)
    monkeypatch.chdir(tmp_path)
    assert resolve_init_from(runs) == paths[1]
    assert resolve_init_from("bert-tiny-pretrain").resolve() == paths[1]  # the recipe's runs/<name> folder
    assert resolve_init_from(paths[0]) == paths[0]  # a file is itself
    paths[1].write_bytes(paths[1].read_bytes()[:100])  # a truncated newest checkpoint is skipped
    with pytest.warns(UserWarning, match="unusable"):
        assert resolve_init_from(runs) == paths[0]
    clf = SequenceClassifier(init_from="bert-tiny-pretrain", num_classes=3)
    assert clf.hparams.init_from == str(Path("runs/bert-tiny-pretrain/version_0/checkpoints/last.ckpt"))
    assert Manifest(runs / "version_0/checkpoints").entries == {}  # resolving never writes
    with pytest.raises(
        FileNotFoundError, match="no complete checkpoint under runs/classifier-lora; run `kit fit"
    ):
        resolve_init_from("classifier-lora")
    with pytest.raises(
        FileNotFoundError, match="neither a checkpoint file, a run folder nor a packaged recipe"
    ):
        resolve_init_from("no-such-thing")


def test_init_from_finds_the_packaged_recipes_without_the_command_line() -> None:
    """The models resolve a recipe name through kit.checkpoint: importing them never imports kit.cli."""
    import subprocess
    import sys

    from kit.checkpoint.init_from import PACKAGED_RECIPES, recipe_run_root
    from kit.cli.main import RECIPES_DIR

    assert PACKAGED_RECIPES == RECIPES_DIR  # the same folder `kit fit -c <name>` reads
    assert recipe_run_root("bert-tiny-pretrain") == Path("runs/bert-tiny-pretrain")
    assert recipe_run_root("no-such-recipe") is None
    code = (
        "import sys, kit.models.sequence_classifier as m\n"
        "m.resolve_init_from.__module__ == 'kit.checkpoint.init_from' or sys.exit('not the kit.checkpoint one')\n"
        "sys.exit(sorted(n for n in sys.modules if n.startswith('kit.cli')) or 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_transfer_recipes_pretrain_mlm_only_and_fine_tune_from_the_newest_run_with_mean_pooling() -> None:
    """The README's choices, pinned: MLM without NSP (NSP lowered the fine-tuned F1 here), each run in its own
    version folder, and classifiers that find the newest pretraining run and pool what MLM trains."""
    from kit.cli.recipes import merged_recipe

    def load(name: str) -> dict:
        return merged_recipe(name)[1]  # an overlay's own file holds only what it changes over its base

    pre = load("bert-tiny-pretrain")
    assert pre["model"]["init_args"]["nsp"] is False and pre["data"]["init_args"]["nsp"] is False
    assert pre["model"]["init_args"]["schedule"] == "cosine"
    for name in (
        "bert-tiny-pretrain",
        "classifier-finetune",
        "classifier-lora",
        "classifier-adapters",
        "classifier-prompt",
        "classifier-qlora",
    ):
        recipe = load(name)
        ckpt = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("KitCheckpoint")]
        assert ckpt and "dirpath" not in ckpt[0]["init_args"], name  # <save_dir>/<name>/version_N/checkpoints
        if name != "bert-tiny-pretrain":
            args = recipe["model"]["init_args"]
            assert args["init_from"] == "bert-tiny-pretrain" and args["pooling"] == "mean", name


def test_masked_lm_refuses_a_causal_backbone() -> None:
    with pytest.raises(ValueError, match="causal=false"):
        MaskedLM(GPTConfig.from_name("debug"))
