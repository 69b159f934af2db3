from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from kit.cli.main import resolve_recipe
from kit.models.gpt import CausalLM
from kit.nn import GPT, GPTConfig


def test_config_errors_say_how_to_fix() -> None:
    with pytest.raises(
        ValueError, match=r"n_embd=100 is not divisible by n_head=3; pick n_head from \[1, 2, 4, 5"
    ):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="dropout=1.5"):
        GPTConfig(dropout=1.5)
    with pytest.raises(ValueError, match="n_layer=0"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="unknown config name 'gpt5'"):
        GPTConfig.from_name("gpt5")


def test_from_name_overrides_and_gpt2_size() -> None:
    assert GPTConfig.from_name("tiny", n_layer=2).n_layer == 2
    # GPT-2 small: ~124M parameters with the 50304 padded vocabulary
    n = GPT(GPTConfig.from_name("gpt2", n_layer=1)).num_params(exclude_positions=False)
    per_block = 12 * 768 * 768 + 13 * 768  # qkv, proj, fc, fc proj weights + biases + 2 LayerNorms
    assert n == 50304 * 768 + 1024 * 768 + per_block + 2 * 768


def test_shapes_and_tied_embeddings() -> None:
    model = GPT(GPTConfig.from_name("debug"))
    logits = model(torch.randint(0, 64, (3, 10)))
    assert logits.shape == (3, 10, 64)
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(GPTConfig.from_name("debug", tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight


def test_causal_attention_ignores_the_future_and_bidirectional_does_not() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 64, (1, 12))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % 64
    causal = GPT(GPTConfig.from_name("debug")).eval()
    assert torch.allclose(causal(x)[0, :-1], causal(y)[0, :-1], atol=1e-6)
    bidir = GPT(GPTConfig.from_name("debug", causal=False)).eval()
    assert not torch.allclose(bidir(x)[0, :-1], bidir(y)[0, :-1], atol=1e-6)


def test_too_long_input_error() -> None:
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        GPT(GPTConfig.from_name("debug"))(torch.zeros(1, 17, dtype=torch.long))


def test_generate_appends_tokens_and_greedy_is_deterministic() -> None:
    model = GPT(GPTConfig.from_name("debug")).eval()
    start = torch.zeros(2, 3, dtype=torch.long)
    out = model.generate(start, 20, temperature=0.0)  # runs past block_size: the context is cropped
    assert out.shape == (2, 23)
    assert torch.equal(out, model.generate(start, 20, temperature=0.0))
    g = torch.Generator().manual_seed(1)
    sampled = model.generate(start, 5, temperature=1.0, top_k=5, generator=g)
    assert sampled.shape == (2, 8) and int(sampled.max()) < 64


def test_causal_lm_loss_smoothing_and_flops() -> None:
    torch.manual_seed(0)
    lm = CausalLM(GPTConfig.from_name("debug"), label_smoothing=0.1)
    x = torch.randint(0, 64, (4, 16))
    loss = lm.training_step((x, x), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    model = lm.model
    expected = (6 * model.num_params() + 12 * 2 * 32 * 16) * 4 * 16
    assert lm.flops_per_batch == pytest.approx(expected)


def test_training_loss_is_label_smoothed_and_validation_is_not() -> None:
    torch.manual_seed(0)
    lm = CausalLM(GPTConfig.from_name("debug"), label_smoothing=0.1)  # debug: no dropout, so deterministic
    idx, targets = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    with torch.no_grad():
        logits = lm.model(idx).view(-1, 64)
        smoothed = F.cross_entropy(logits, targets.view(-1), label_smoothing=0.1)
        plain = F.cross_entropy(logits, targets.view(-1))
        train = lm.training_step((idx, targets), 0)
        lm.validation_step((idx, targets), 0)
    assert (smoothed - plain).abs() > 1e-3  # the two losses are told apart on this batch
    assert torch.allclose(train, smoothed, atol=1e-6), "label smoothing is missing from the training loss"
    assert torch.allclose(lm.val_loss.compute(), plain, atol=1e-6)  # validation reports the true NLL


def test_name_fills_the_fields_left_none_and_explicit_fields_win() -> None:
    assert GPTConfig() == replace(GPTConfig(name="tiny"), name=None)  # tiny is the base
    gpt2 = GPTConfig(name="gpt2", dropout=0.1)
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.dropout, gpt2.attn_dropout) == (12, 768, 0.1, 0.0)
    assert gpt2.vocab_size is None  # from the datamodule: a name never fixes the tokenizer
    assert GPTConfig.from_name("gpt2").vocab_size == 50304  # from_name copies the preset's vocabulary
    assert GPTConfig.from_name("debug", vocab_size=None).vocab_size is None
    assert GPTConfig(name="gpt2", n_layer=2) == GPTConfig.from_name("gpt2", n_layer=2, vocab_size=None)
    resolved = GPTConfig(name="gpt2", n_layer=2)
    assert GPTConfig(**asdict(resolved)) == resolved  # what a checkpoint's hparams rebuild
    assert replace(resolved, vocab_size=300).n_layer == 2
    with pytest.raises(ValueError, match=r"unknown config name 'gpt5'; choose one of \['debug', 'gpt2'"):
        GPTConfig(name="gpt5")


# What the recipes spelled out before they said `name: tiny`: every field, as `--print_config` showed it.
_OLD_TINY = dict(
    vocab_size=None, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.1, attn_dropout=0.1,
    embd_dropout=0.1, bias=True, causal=True, mlp_ratio=4, tie_embeddings=True, activation_checkpointing=False,
)  # fmt: skip
_OLD_RECIPES = {
    "gpt-tiny": _OLD_TINY,
    "seed-recipe": {**_OLD_TINY, "dropout": 0.2, "attn_dropout": 0.2, "embd_dropout": 0.2},
}


def _cli_config(args: list[str]) -> GPTConfig:
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        model_class=None,
        datamodule_class=None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=args,
    )
    return cli.model.config


@pytest.mark.parametrize("recipe", sorted(_OLD_RECIPES))
def test_recipe_with_a_name_resolves_to_the_config_it_used_to_spell_out(
    recipe, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the recipe's logger and checkpoint folders
    config = _cli_config(["--config", resolve_recipe(recipe)])
    assert config.name == "tiny"
    assert {k: v for k, v in asdict(config).items() if k in _OLD_RECIPES[recipe]} == _OLD_RECIPES[recipe]
    assert (config.attention, config.ffn) == ("dense", "mlp")  # the layers the old code hard-wired
    override = _cli_config(["--config", resolve_recipe(recipe), "--model.init_args.config.n_layer", "6"])
    assert asdict(override) == {**asdict(config), "n_layer": 6}


def test_causal_lm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="schedule='exp'"):
        CausalLM(GPTConfig.from_name("debug"), schedule="exp")
    with pytest.raises(ValueError, match="label_smoothing=1.0"):
        CausalLM(GPTConfig.from_name("debug"), label_smoothing=1.0)


def test_causal_lm_learns_a_repeating_sequence() -> None:
    torch.manual_seed(0)
    lm = CausalLM(GPTConfig.from_name("debug"), lr=3e-3, warmup_steps=0)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    seq = torch.arange(17).repeat(8, 1) % 64
    batch = (seq[:, :-1], seq[:, 1:])
    first = lm._loss(batch, 0.0).item()
    for _ in range(60):
        loss = lm._loss(batch, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_dict_config_round_trip_as_load_from_checkpoint_does() -> None:
    lm = CausalLM(GPTConfig.from_name("debug"))
    again = CausalLM(**lm.hparams)
    assert again.config == lm.config
    again.model.load_state_dict(lm.model.state_dict())
