"""HFCausalLM / HFSequenceClassifier: any transformers model (here GPT-NeoX and Phi, which kit.nn does not
implement) trained under the kit's callbacks, PEFT through peft, and the FSDP preset reading the model's layers."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from packaging.version import Version
from torch.utils.data import DataLoader, TensorDataset

from kit.callbacks import GradientClipping, GradientHealth, SpikeGuard
from kit.models.hf import (
    _PROMPT_VOCAB_PEFT,
    HFCausalLM,
    HFSequenceClassifier,
    _prompt_tuning_init,
    apply_hf_peft,
    decoder_layer_classes,
)
from kit.nn.peft import PeftConfig

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
_PEFT_SAMPLES_VOCAB = Version(peft.__version__) >= Version(_PROMPT_VOCAB_PEFT)
VOCAB = 96


def _neox(folder: Path, **overrides) -> Path:
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.5, **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def _phi(folder: Path) -> Path:
    cfg = transformers.PhiConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def _lm_loader(n: int = 40, T: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    # a learnable pattern: each row counts up from a random start
    start = torch.randint(0, VOCAB - T - 1, (n, 1), generator=g)
    rows = start + torch.arange(T + 1)
    return DataLoader(TensorDataset(rows[:, :-1], rows[:, 1:]), batch_size=4)


def _trainer(steps: int = 5, **kwargs) -> pl.Trainer:
    callbacks = [GradientHealth(), SpikeGuard(), GradientClipping(max_norm=1.0)]
    return pl.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, limit_val_batches=2, num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


@pytest.mark.parametrize("family", ["neox", "phi"])
def test_a_family_the_kit_does_not_implement_trains_five_steps_under_the_health_callbacks(
    tmp_path, family
) -> None:
    folder = (_neox if family == "neox" else _phi)(tmp_path / family)
    lm = HFCausalLM(str(folder), lr=3e-3, warmup_steps=0)
    losses = _Losses()
    trainer = _trainer(val_check_interval=5)
    trainer.callbacks.append(losses)
    trainer.fit(lm, train_dataloaders=_lm_loader(), val_dataloaders=_lm_loader(8))
    assert trainer.global_step == 5 and len(losses.losses) == 5
    assert all(math.isfinite(v) for v in losses.losses)
    assert losses.losses[-1] < losses.losses[0], losses.losses
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/ppl", "val/loss", "val/ppl", "grad_norm/pre_clip"} <= set(metrics)
    assert lm.flops_per_batch == 6 * lm._n_params * 4 * 16 and lm._n_params > 0


def test_targets_of_minus_100_carry_no_loss(tmp_path) -> None:
    lm = HFCausalLM(str(_neox(tmp_path / "m")))
    x = torch.randint(0, VOCAB, (2, 8))
    y = torch.randint(0, VOCAB, (2, 8))
    masked = y.clone()
    masked[:, :4] = -100
    logits = lm(x).float()
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, VOCAB), y[:, 4:].reshape(-1))
    assert torch.allclose(lm._loss((x, masked)), expected)


@pytest.mark.parametrize("method", ["lora", "qlora", "prompt", "prompt-random"])
def test_peft_methods_train_only_their_own_parameters(tmp_path, method) -> None:
    method, _, prompt_init = method.partition("-")
    prompt_init = prompt_init or "vocab"
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    if method == "prompt" and prompt_init == "vocab" and not _PEFT_SAMPLES_VOCAB:
        pytest.skip(f"prompt_init='vocab' needs peft>={_PROMPT_VOCAB_PEFT} (installed {peft.__version__})")
    folder = _neox(tmp_path / "m")
    knobs = {"method": method, "lora_r": 4, "prompt_tokens": 4, "prompt_init": prompt_init}
    lm = HFCausalLM(str(folder), lr=1e-2, warmup_steps=0, peft=knobs)
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable and 0 < lm.trainable_fraction < 0.5
    marker = "prompt_encoder" if method == "prompt" else "lora_"
    assert all(marker in n for n in trainable), sorted(trainable)[:5]
    if method == "lora":  # the kit's default targets mean every Linear but the head on a transformers model
        wrapped = {n.split(".lora_A")[0].split(".")[-1] for n in trainable if "lora_A" in n}
        assert wrapped == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if not p.requires_grad}
    x, _ = next(iter(_lm_loader()))
    assert lm(x).shape == (4, 16, VOCAB), "a soft prompt's positions are cut from the logits"
    _trainer(steps=2).fit(lm, train_dataloaders=_lm_loader())
    after = dict(lm.model.named_parameters())
    assert all(torch.equal(before[n], after[n].detach()) for n in before), "the base stays frozen bitwise"


def test_vocab_prompt_init_on_an_older_peft_names_both_versions_and_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(peft, "__version__", "0.17.1")
    with pytest.raises(
        ValueError, match=r"needs peft>=0\.18\.0, installed 0\.17\.1: pip install -U peft"
    ) as info:
        apply_hf_peft(torch.nn.Linear(2, 2), PeftConfig(method="prompt", prompt_init="vocab"), "CAUSAL_LM")
    assert "\n" not in str(info.value) and "prompt_init='random'" in str(info.value)
    random = PeftConfig(method="prompt", prompt_init="random")
    assert _prompt_tuning_init(random) == peft.PromptTuningInit.RANDOM  # the other init still works there


def test_adapters_are_refused_with_the_methods_that_work() -> None:
    with pytest.raises(
        ValueError, match=r"kit's own method for kit.nn.GPT.*\('full', 'lora', 'qlora', 'prompt'\)"
    ):
        apply_hf_peft(torch.nn.Linear(2, 2), PeftConfig(method="adapters"), "CAUSAL_LM")


def test_a_folder_that_is_not_a_model_says_how_to_make_one(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a local Hugging Face folder"):
        HFCausalLM(str(tmp_path))


def test_sequence_classifier_trains_with_the_kit_metric_names(tmp_path) -> None:
    folder = _phi(tmp_path / "phi")
    clf = HFSequenceClassifier(str(folder), num_labels=3, lr=3e-3, warmup_steps=0, peft={"method": "lora"})
    head = [n for n, p in clf.model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert head and all("score" in n for n in head), "the new head trains beside LoRA"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, VOCAB, (24, 12), generator=g)
    x[::2, -3:] = 0  # right padding with the model's pad_token_id
    y = x[:, 0] % 3
    data = DataLoader(TensorDataset(x, y), batch_size=6)
    trainer = _trainer(val_check_interval=4)
    trainer.fit(clf, train_dataloaders=data, val_dataloaders=data)
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/acc", "val/f1"} <= set(metrics)
    assert math.isfinite(float(metrics["val/loss"]))
    assert clf(x[:2]).shape == (2, 3)


def test_decoder_layers_are_read_from_the_model_for_fsdp_and_checkpointing(tmp_path) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
        apply_activation_checkpointing,
    )

    from kit.parallel.strategies import FSDPZero3Strategy, ModelBlocks

    lm = HFCausalLM(str(_neox(tmp_path / "m")), peft={"method": "lora"})
    layer = transformers.models.gpt_neox.modeling_gpt_neox.GPTNeoXLayer
    assert decoder_layer_classes(lm) == {layer} == lm.decoder_layer_classes()
    policy = ModelBlocks()
    apply_activation_checkpointing(lm, auto_wrap_policy=policy)  # the policy protocol FSDP's auto-wrap uses
    assert policy.classes == (layer,)
    wrapped = [m for m in lm.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrapped) == 2 and all(isinstance(m._checkpoint_wrapped_module, layer) for m in wrapped)
    strategy = FSDPZero3Strategy(blocks="auto", param_dtype="fp32")
    assert isinstance(strategy.kwargs["auto_wrap_policy"], ModelBlocks)
    with pytest.raises(ValueError, match="declares no decoder-layer class"):
        decoder_layer_classes(torch.nn.Linear(2, 2))


def test_a_tokenizer_larger_than_the_embedding_names_both_sizes(tmp_path) -> None:
    lm = HFCausalLM(str(_neox(tmp_path / "m")))

    class _Data(pl.LightningDataModule):
        vocab_size = VOCAB + 5

        def train_dataloader(self):
            return _lm_loader()

    with pytest.raises(
        ValueError, match=rf"tokenizer has {VOCAB + 5} tokens but the model .* embeds {VOCAB}"
    ):
        _trainer(steps=1).fit(lm, datamodule=_Data())
