"""Hugging Face checkpoints in and out of the kit's GPT (``kit.nn.hf``): random tiny models built with
``transformers`` inside the tests (nothing downloads), compared logit for logit both ways."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402

from kit.nn import GPT, GPTConfig  # noqa: E402
from kit.nn.hf import SUPPORTED, config_from_hf, from_hf, read_hf_folder, to_hf  # noqa: E402

transformers.logging.set_verbosity_error()
LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def _gpt2(**kw) -> transformers.PreTrainedModel:
    cfg = {"n_embd": 48, "n_layer": 2, "n_head": 3, "vocab_size": 71, "n_positions": 32, **kw}
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg))


def _llama(**kw) -> transformers.PreTrainedModel:
    cfg = {
        "hidden_size": 48,
        "intermediate_size": 80,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "vocab_size": 71,
        "max_position_embeddings": 64,
        **kw,
    }
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))


def _mistral(**kw) -> transformers.PreTrainedModel:
    cfg = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 53,
        "max_position_embeddings": 64,
        "sliding_window": 5,
        **kw,
    }
    return transformers.MistralForCausalLM(transformers.MistralConfig(**cfg))


def _qwen2(**kw) -> transformers.PreTrainedModel:
    cfg = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 3,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "vocab_size": 90,
        "max_position_embeddings": 64,
        **kw,
    }
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**cfg))


CASES = {
    "gpt2": lambda: _gpt2(),
    "gpt2-untied-wide": lambda: _gpt2(n_embd=64, n_head=8, n_inner=96, tie_word_embeddings=False),
    "gpt2-relu": lambda: _gpt2(activation_function="relu", n_head=4),
    "llama-gqa": lambda: _llama(),
    "llama-mqa-theta": lambda: _llama(num_key_value_heads=1, rope_theta=500000.0),
    "llama-mha-tied-bias": lambda: _llama(
        num_key_value_heads=6, tie_word_embeddings=True, attention_bias=True, mlp_bias=True
    ),
    "llama3-scaling": lambda: _llama(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", **LLAMA3}),
    "mistral-sliding": lambda: _mistral(),
    "mistral-dense": lambda: _mistral(sliding_window=None, num_key_value_heads=2),
    "mistral-head-dim": lambda: _mistral(head_dim=16, num_key_value_heads=2),
    "llama-head-dim": lambda: _llama(head_dim=4, num_key_value_heads=3),
    "qwen2": lambda: _qwen2(),
    "qwen2-tied-mqa": lambda: _qwen2(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6),
}


def _random(hf: torch.nn.Module) -> torch.nn.Module:
    """Biases and norms are zeros/ones at init: randomise every tensor, so a wrong mapping cannot hide."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
    return hf.eval()


def _ids(vocab: int, T: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case", sorted(CASES))
def test_loaded_model_gives_transformers_logits(case: str) -> None:
    hf = _random(CASES[case]())
    model = from_hf(hf).eval()
    x = _ids(hf.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)
    assert model.config.tie_embeddings == (model.lm_head.weight is model.wte.weight)


@pytest.mark.parametrize("case", sorted(CASES))
def test_folder_round_trip_is_bitwise_and_transformers_loads_it(case: str, tmp_path: Path) -> None:
    hf = _random(CASES[case]())
    hf.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf").eval()
    to_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    # a Mistral without a window is a Llama: the kit's config cannot tell them apart, and need not
    assert back.config.model_type == ("llama" if case == "mistral-dense" else hf.config.model_type)
    x = _ids(hf.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x), atol=1e-4, rtol=1e-4)
    again = from_hf(tmp_path / "out")
    assert again.config == model.config
    mine, theirs = model.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


KIT_CONFIGS = {
    "gpt2-layout": {"name": "debug"},
    "gpt2-gelu-tanh-untied": {
        "name": "debug",
        "activation": "gelu_tanh",
        "tie_embeddings": False,
        "n_head": 4,
    },
    "llama-debug": {"name": "llama-debug"},
    "llama-mqa-scaled": {"name": "llama-debug", "n_kv_head": 1, "rope": {"theta": 5e5, "scaling": LLAMA3}},
    "llama-biases": {"name": "llama-debug", "bias": True, "tie_embeddings": True},
    "qwen2-like": {"name": "llama-debug", "qkv_bias": True, "n_embd": 64, "n_head": 8, "n_kv_head": 2},
    "mistral-like": {"name": "llama-debug", "attention": "sliding_window", "sliding": {"window": 4}},
    "llama-head-dim": {"name": "llama-debug", "head_dim": 12, "n_kv_head": 1},
}


@pytest.mark.parametrize("case", sorted(KIT_CONFIGS))
def test_exported_kit_model_gives_the_same_logits_in_transformers(case: str, tmp_path: Path) -> None:
    values = dict(KIT_CONFIGS[case])
    cfg = GPTConfig.from_name(values.pop("name"), **values)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.normal_(0.5, 0.1)
    to_hf(model, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    expected = {"qwen2-like": "qwen2", "mistral-like": "mistral", "gpt2-layout": "gpt2"}.get(case)
    if expected:
        assert hf.config.model_type == expected
    x = _ids(cfg.vocab_size, T=cfg.block_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    back = from_hf(tmp_path / "out")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_mistral_window_is_really_used() -> None:
    hf = _random(_mistral())
    model = from_hf(hf)
    assert model.config.attention == "sliding_window" and model.config.sliding.window == 5
    dense = from_hf(hf, attention="dense").eval()
    x = _ids(hf.config.vocab_size)
    assert not torch.allclose(dense(x), model.eval()(x), atol=1e-3)


def test_sharded_index_loads_and_its_paths_stay_inside(tmp_path: Path) -> None:
    hf = _random(_llama())
    hf.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    model = from_hf(tmp_path / "hf").eval()
    x = _ids(71)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "outside.safetensors"))
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        first = next(iter(index["weight_map"]))
        (tmp_path / "hf" / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {**index["weight_map"], first: bad}})
        )
        with pytest.raises(ValueError, match="leaves"):
            read_hf_folder(tmp_path / "hf")


def test_other_architectures_get_an_error_listing_the_supported_ones(tmp_path: Path) -> None:
    neox = transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=50
        )
    )
    with pytest.raises(ValueError, match=r"model_type='gpt_neox'.*\['gpt2', 'llama', 'mistral', 'qwen2'\]"):
        from_hf(neox)
    neox.save_pretrained(tmp_path / "neox")
    with pytest.raises(ValueError, match="gpt_neox.*supported"):
        from_hf(tmp_path / "neox")
    assert sorted(SUPPORTED) == ["gpt2", "llama", "mistral", "qwen2"]


def test_unimplemented_variants_are_refused() -> None:
    with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
        config_from_hf(
            _llama(
                rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
            ).config.to_dict()
        )
    qwen = _qwen2(use_sliding_window=True, sliding_window=8, max_window_layers=1).config.to_dict()
    with pytest.raises(ValueError, match="mixes sliding-window and full-attention"):
        config_from_hf(qwen)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    hf = _gpt2()
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        from_hf(tmp_path)


def test_to_hf_refuses_a_non_empty_folder_and_cuts_a_padded_vocabulary(tmp_path: Path) -> None:
    model = GPT(GPTConfig.from_name("debug")).eval()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        to_hf(model, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
    to_hf(model, tmp_path / "out", overwrite=True, vocab_size=50)
    assert not (tmp_path / "out" / "notes.txt").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert hf.config.vocab_size == 50 and hf.get_input_embeddings().weight.shape == (50, 32)
    x = _ids(50)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[..., :50], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="exceeds the model's embedding"):
        to_hf(model, tmp_path / "big", vocab_size=65)


def test_unexportable_configs_say_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="matches no Hugging Face family"):
        to_hf(GPT(GPTConfig.from_name("debug", norm="rmsnorm")), tmp_path / "a")
    with pytest.raises(ValueError, match="GPT-2 has biases"):
        to_hf(GPT(GPTConfig.from_name("debug", bias=False)), tmp_path / "b")
    with pytest.raises(ValueError, match="causal decoders"):
        to_hf(GPT(GPTConfig.from_name("debug", causal=False)), tmp_path / "c")
    assert not any(tmp_path.iterdir())


def _tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"] * 20, trainer)
    return tok


def test_trained_gpt_tiny_generates_the_same_greedy_tokens_in_transformers(tmp_path: Path) -> None:
    tok = _tokenizer(300)
    vocab = tok.get_vocab_size()
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny", vocab_size=vocab))  # the gpt-tiny recipe's model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor([tok.encode("the cat sat on the mat a dog ran in the park " * 4).ids[:33]])
    for _ in range(5):  # a few steps of training, dropout on
        logits = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), data[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    to_hf(model, tmp_path / "out", tokenizer=tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok("the cat")["input_ids"] == tok.encode("the cat").ids
    prompt = data[:, :5]
    ours = model.generate(prompt, 30, temperature=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(theirs, ours)


def test_exported_llama_generates_the_same_greedy_tokens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-debug", block_size=48)).eval()
    to_hf(model, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    prompt = _ids(64, T=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(theirs, model.generate(prompt, 30, temperature=0))


# -- CausalLM(init_from=...) ------------------------------------------------------------------------------------
def test_causal_lm_starts_from_a_hugging_face_folder(tmp_path: Path) -> None:
    from kit.models.gpt import CausalLM

    hf = _random(_qwen2())
    hf.save_pretrained(tmp_path / "hf")
    lm = CausalLM(init_from=str(tmp_path / "hf")).eval()
    x = _ids(90)
    with torch.no_grad():
        torch.testing.assert_close(lm(x), hf(x).logits, atol=1e-4, rtol=1e-4)
    assert lm.model.config.qkv_bias is True and "init_from" not in lm.hparams
    changed = CausalLM(config={"dropout": 0.2}, init_from=str(tmp_path / "hf"))
    assert changed.config.dropout == 0.2 and changed.config.n_kv_head == 4
    with pytest.raises(ValueError, match="do not fit model.config"):
        CausalLM(config=GPTConfig.from_name("debug"), init_from=str(tmp_path / "hf"))


def test_causal_lm_starts_from_a_kit_checkpoint(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from conftest import make_trainer
    from torch.utils.data import DataLoader, TensorDataset

    from kit.models.gpt import CausalLM

    pl.seed_everything(0)
    trained = CausalLM(GPTConfig.from_name("llama-debug"), warmup_steps=1, max_steps=3)
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(trained, DataLoader(TensorDataset(x, x.roll(-1, dims=1)), batch_size=4))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    lm = CausalLM(init_from=str(tmp_path / "run.ckpt")).eval()
    assert lm.config == trained.config
    with torch.no_grad():
        torch.testing.assert_close(lm(x), trained.eval()(x))
    fresh = CausalLM(GPTConfig.from_name("llama-debug")).eval()
    assert not torch.allclose(fresh(x), lm(x))


def test_to_hf_wants_the_plain_gpt_and_from_hf_casts(tmp_path: Path) -> None:
    from kit.nn.peft import PeftConfig, apply_peft, merge_lora

    model = GPT(GPTConfig.from_name("llama-debug"))
    with pytest.raises(ValueError, match="no GPTConfig at .config"):
        to_hf(torch.nn.Sequential(model), tmp_path / "a")
    lora = apply_peft(model, PeftConfig(method="lora", lora_targets=["qkv", "proj", "gate", "up"]))
    with pytest.raises(ValueError, match="merge_lora"):
        to_hf(lora, tmp_path / "b")
    merged = merge_lora(lora)
    to_hf(merged, tmp_path / "c")
    half = from_hf(tmp_path / "c", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_half_precision_logits_stay_close_to_transformers() -> None:
    hf = _random(_llama(num_key_value_heads=3)).to(torch.bfloat16)
    model = from_hf(hf).eval()
    assert model.wte.weight.dtype == torch.bfloat16
    x = _ids(71)
    with torch.no_grad():
        ours, theirs = model(x).float(), hf(x).logits.float()
    assert (ours - theirs).abs().max() < 0.05 * theirs.abs().max()
