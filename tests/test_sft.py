"""Fine-tuning a pretrained model: PEFT on the kit's GPT over instruction data, LoRA merged equals unmerged, the
export reloads in transformers, and the sft-lora recipe end to end through the CLI on a tiny random Llama."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from kit.callbacks.export_hf import ExportHF, merged_gpt
from kit.data.tokenizer import EOS, train_bpe
from kit.datamodules.instruct import InstructDataModule
from kit.models.gpt import CausalLM
from kit.nn import GPTConfig
from kit.nn.peft import PeftConfig, apply_peft

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = [
    "what",
    "is",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "plus",
    "minus",
    "equals",
    "the",
    "answer",
]


def _tokenizer(folder: Path) -> int:
    tok = train_bpe([" ".join(WORDS)] * 30, vocab_size=300)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "eos_token": EOS,
        "pad_token": EOS,
        "chat_template": CHATML,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def _data(path: Path, n: int = 48) -> str:
    rows = []
    for i in range(n):
        a, b = WORDS[2 + i % 5], WORDS[2 + (i // 5) % 5]
        if i % 2:
            rows.append({"prompt": f"what is {a} plus {b}\n", "response": f"the answer is {a} {b}"})
        else:
            chat = [
                {"role": "user", "content": f"{a} plus {b}"},
                {"role": "assistant", "content": f"{b} {a}"},
            ]
            rows.append({"messages": chat})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _llama_folder(folder: Path, family: str = "llama") -> Path:
    """A tiny random Llama (grouped-query 4:2, untied head) or Qwen2 (multi-query 6:1, q/k/v biases, tied head) saved
    as a Hugging Face folder, with the test tokenizer beside it."""
    vocab = _tokenizer(folder)
    if family == "qwen2":
        cfg = transformers.Qwen2Config(
            vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=1, max_position_embeddings=128, rope_theta=50000.0, tie_word_embeddings=True,
        )  # fmt: skip
    else:
        cfg = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0, tie_word_embeddings=False,
        )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    for name, p in model.named_parameters():  # non-zero q/k/v biases, so the export has to carry them
        if name.endswith("proj.bias"):
            torch.nn.init.normal_(p, std=0.1)
    model.save_pretrained(folder)
    return folder


def _trainer(steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1, **kwargs,
    )  # fmt: skip


def test_lora_on_the_kits_gpt_trains_only_the_adapters_on_instruction_data(tmp_path) -> None:
    vocab = _tokenizer(tmp_path / "tok")
    dm = InstructDataModule(_data(tmp_path / "d.jsonl"), str(tmp_path / "tok"), block_size=32, batch_size=4)
    lm = CausalLM(
        GPTConfig.from_name("debug", vocab_size=vocab, block_size=32, dropout=0.0),
        lr=1e-2, warmup_steps=0, peft={"method": "lora", "lora_r": 4},
    )  # fmt: skip
    frozen = {n: p.detach().clone() for n, p in lm.model.named_parameters() if not p.requires_grad}
    assert frozen and all("lora_" in n for n, p in lm.model.named_parameters() if p.requires_grad)
    _trainer(6).fit(lm, datamodule=dm)
    after = dict(lm.model.named_parameters())
    assert all(torch.equal(v, after[n].detach()) for n, v in frozen.items()), "the backbone stays frozen"
    assert lm.hparams["peft"]["method"] == "lora"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_merged_gives_the_unmerged_outputs_and_leaves_the_training_model_alone(method) -> None:
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    from kit.nn import GPT

    model = apply_peft(GPT(GPTConfig.from_name("debug", dropout=0.0)), PeftConfig(method=method, lora_r=4))
    for name, p in model.named_parameters():  # a trained adapter: B is no longer zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.eval()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    with torch.no_grad():
        expected = model(x)
        merged = merged_gpt(model)
        got = merged.eval()(x)
    assert type(merged).__name__ == "GPT" and not any("lora" in k for k in merged.state_dict())
    # LoRA: the same float arithmetic reordered; QLoRA: the 4-bit layer dequantizes the same NF4 values
    assert torch.allclose(got, expected, atol=1e-5 if method == "lora" else 1e-4)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "the merge works on a copy"


def test_a_transformers_lora_run_is_exported_merged_and_reloads(tmp_path) -> None:
    from kit.models.hf import HFCausalLM

    folder = _llama_folder(tmp_path / "llama")
    dm = InstructDataModule(_data(tmp_path / "d.jsonl"), block_size=48, batch_size=4)
    lm = HFCausalLM(str(folder), lr=1e-2, warmup_steps=0, peft={"method": "lora", "lora_r": 4})
    export = ExportHF(str(tmp_path / "out"))
    _trainer(4, callbacks=[export]).fit(lm, datamodule=dm)
    assert dm.tokenizer_folder.folder == folder, "the tokenizer defaults to the model's own folder"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", local_files_only=True
    ).eval()
    lm.eval()
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, lm(x), atol=1e-4)
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (
        tmp_path / "out" / "tokenizer_config.json"
    ).is_file()
    assert any("lora_" in n for n, _ in lm.model.named_parameters()), "the training model keeps its adapters"


def test_export_refuses_prompt_tuning_before_training_and_never_writes_over_its_input(tmp_path) -> None:
    vocab = _tokenizer(tmp_path / "tok")
    dm = InstructDataModule(_data(tmp_path / "d.jsonl"), str(tmp_path / "tok"), block_size=32, batch_size=4)
    lm = CausalLM(GPTConfig.from_name("debug", vocab_size=vocab, block_size=32), peft={"method": "prompt"})
    with pytest.raises(ValueError, match="cannot write a 'prompt' run as a Hugging Face model"):
        _trainer(2, callbacks=[ExportHF(str(tmp_path / "out"))]).fit(lm, datamodule=dm)
    assert not (tmp_path / "out").exists()

    from kit.models.hf import HFCausalLM

    folder = _llama_folder(tmp_path / "llama")
    lm = HFCausalLM(str(folder), peft={"method": "lora"})
    with pytest.raises(ValueError, match="is the folder the run read from"):
        _trainer(1, callbacks=[ExportHF(str(folder))]).fit(
            lm, datamodule=InstructDataModule(_data(tmp_path / "e.jsonl"), block_size=48)
        )


# -- the kit's GPT loaded from a Hugging Face folder and written back (kit.nn.hf) ---------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_lora_fine_tune_of_the_kits_gpt_exports_to_a_folder_transformers_loads(tmp_path, family) -> None:
    folder = _llama_folder(tmp_path / family, family)
    dm = InstructDataModule(_data(tmp_path / "d.jsonl"), block_size=48, batch_size=4)
    lm = CausalLM(init_from=str(folder), lr=1e-2, warmup_steps=0, peft={"method": "lora", "lora_r": 4})
    export = ExportHF(str(tmp_path / "out"))
    _trainer(4, callbacks=[export]).fit(lm, datamodule=dm)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", local_files_only=True
    ).eval()
    lm.eval()
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, lm.model(x), atol=1e-4)
    assert reloaded.config.model_type == family
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    source = dict(transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).named_parameters())
    moved = [n for n, p in reloaded.named_parameters() if not torch.equal(p, source[n])]
    assert moved and all("proj.weight" in n for n in moved), "the merged LoRA updates, and nothing else, moved"


def test_sft_lora_recipe_end_to_end_through_the_cli(tmp_path) -> None:
    folder = _llama_folder(tmp_path / "llama")
    data = _data(tmp_path / "data.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KIT_CACHE": str(tmp_path / "cache")}
    args = [
        "fit", "--config", "sft-lora", "--model.init_args.init_from", str(folder), "--data.init_args.paths", data,
        # bounded for CPU: everything else is the recipe's
        "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--data.init_args.block_size=48", "--data.init_args.batch_size=4",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "kit.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out,) = list((tmp_path / "runs" / "sft-lora").glob("version_*/hf"))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert reloaded.config.model_type == "llama" and (out / "tokenizer.json").is_file()
    source = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    changed = [
        n for n, p in reloaded.named_parameters() if not torch.equal(p, dict(source.named_parameters())[n])
    ]
    assert changed and all("proj" in n for n in changed), "only the LoRA-targeted projections moved"


def test_export_hf_keeps_the_callback_contract_in_a_module_that_is_not_ours(tmp_path) -> None:
    # kit.callbacks.__all__ does not list ExportHF yet, so the shared contract test does not reach it: the same checks
    from conftest import TinyRegressor, make_trainer, regression_loader

    first, second = ExportHF(), ExportHF(str(tmp_path / "elsewhere"))
    with pytest.warns(UserWarning, match="nothing will be exported"):
        trainer = make_trainer(tmp_path, [first, second], max_steps=3, limit_val_batches=0)
        trainer.fit(TinyRegressor(), regression_loader())
    assert trainer.global_step == 3 and first.state_key != second.state_key
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    saved = torch.load(tmp_path / "c.ckpt", weights_only=False)["callbacks"]
    assert saved[first.state_key] == first.state_dict() == {"exported": None}
    fresh = ExportHF()
    fresh.load_state_dict({"exported": "x"})
    assert fresh.state_dict() == {"exported": "x"}
    assert not any(tmp_path.rglob("hf")), "nothing written for a module without a model to export"
