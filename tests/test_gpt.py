import warnings
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from kit.cli.main import resolve_recipe
from kit.models.gpt import CausalLM
from kit.nn import GPT, GPTConfig
from kit.nn.config import RENAMED
from kit.nn.layers import MoEConfig, SlidingWindowConfig, UniversalConfig


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


# -- sub-configs and the older flat names ------------------------------------------------------------------------
# a valid, non-default value for each flat name older configs and checkpoints use
_FLAT_VALUES = {
    "attn_window": 8,
    "attn_global": [0, 5],
    "moe_experts": 4,
    "moe_top_k": 2,
    "moe_capacity_factor": 1.5,
    "moe_eval_capacity_factor": 1.0,
    "moe_aux_alpha": 0.02,
    "moe_z_loss": 0.0,
    "moe_jitter": 0.01,
    "moe_expert_dropout": 0.1,
    "ut_max_steps": 3,
    "act_eps": 0.05,
    "act_ponder_cost": 0.1,
}


def test_every_flat_name_has_a_value_here() -> None:
    assert set(_FLAT_VALUES) == set(RENAMED)


@pytest.mark.parametrize("old", sorted(_FLAT_VALUES))
def test_from_dict_moves_each_flat_name_to_its_sub_config_with_a_warning(old: str) -> None:
    group, key = RENAMED[old]
    value = _FLAT_VALUES[old]
    with pytest.warns(DeprecationWarning, match=rf"GPTConfig key '{old}' is now {group}\.{key}; write"):
        cfg = GPTConfig.from_dict({"name": "debug", old: value})
    assert getattr(getattr(cfg, group), key) == value
    assert cfg == GPTConfig(name="debug", **{group: {key: value}})
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is now {group}\.{key}"):
        assert GPTConfig(name="debug", **{old: value}) == cfg  # the constructor reads them too
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is now {group}\.{key}"):
        assert GPTConfig.from_name("debug", **{old: value}) == GPTConfig.from_name(
            "debug", **{group: {key: value}}
        )


def test_the_renames_named_in_the_docs() -> None:
    assert RENAMED["moe_experts"] == ("moe", "experts")
    assert RENAMED["attn_window"] == ("sliding", "window")
    assert RENAMED["attn_global"] == ("sliding", "global_positions")
    assert RENAMED["ut_max_steps"] == ("universal", "max_steps")
    assert RENAMED["act_eps"] == ("universal", "act_eps")
    assert RENAMED["act_ponder_cost"] == ("universal", "ponder_cost")


def test_unknown_or_doubled_keys_raise_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"unknown key 'n_layers' in GPTConfig; did you mean \['n_layer'"):
        GPTConfig.from_dict({"n_layers": 2})
    with pytest.raises(ValueError, match=r"unknown key 'expert' in moe; did you mean \['experts'"):
        GPTConfig(moe={"expert": 2})
    with pytest.raises(ValueError, match=r"unknown key 'moe_experts' in moe; did you mean \['experts'"):
        GPTConfig(moe={"moe_experts": 2})
    with pytest.raises(ValueError, match=r"moe\.experts is set twice.*keep only moe\.experts"):
        GPTConfig.from_dict({"moe_experts": 4, "moe": {"experts": 2}})
    with pytest.raises(ValueError, match=r"moe=4 must be a MoEConfig or a dict of its fields"):
        GPTConfig(moe=4)


def test_sub_configs_check_their_values_beside_their_layer() -> None:
    with pytest.raises(ValueError, match=r"moe\.experts=2, moe\.top_k=3: need 1 <= top_k <= experts"):
        GPTConfig(moe={"experts": 2, "top_k": 3})
    with pytest.raises(ValueError, match=r"moe\.z_loss=-1 must be >= 0"):
        MoEConfig(z_loss=-1)
    with pytest.raises(ValueError, match=r"moe\.expert_dropout=1.0 must be in \[0, 1\)"):
        MoEConfig(expert_dropout=1.0)
    with pytest.raises(ValueError, match=r"universal\.max_steps=0 must be >= 1, or None for n_layer"):
        GPTConfig(universal={"max_steps": 0})
    with pytest.raises(ValueError, match=r"universal\.act_eps=1.0 must be in \(0, 1\)"):
        UniversalConfig(act_eps=1.0)
    with pytest.raises(ValueError, match=r"universal\.ponder_cost=-0.1 must be >= 0"):
        UniversalConfig(ponder_cost=-0.1)
    with pytest.raises(ValueError, match=r"sliding\.window=0 must be >= 1"):
        SlidingWindowConfig(window=0)
    assert SlidingWindowConfig(global_positions=(3, 0)).global_positions == [3, 0]  # a tuple (YAML) -> list


def test_sub_configs_round_trip_through_asdict_and_from_dict() -> None:
    cfg = GPTConfig.from_name(
        "debug",
        attention="sliding_window",
        sliding=SlidingWindowConfig(window=4, global_positions=[0]),
        ffn="moe",
        moe={"experts": 4, "top_k": 2},
        depth="universal",
        universal={"max_steps": 3},
        activation="silu",
    )
    assert isinstance(cfg.moe, MoEConfig) and isinstance(cfg.universal, UniversalConfig)
    assert asdict(cfg)["moe"] == asdict(MoEConfig(experts=4, top_k=2))
    assert GPTConfig(**asdict(cfg)) == cfg  # what a checkpoint's hparams rebuild
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # nested names are current: no warning
        assert GPTConfig.from_dict(asdict(cfg)) == cfg
    assert replace(cfg, n_layer=3).moe == cfg.moe
    assert GPTConfig().sliding is not GPTConfig().sliding  # each config its own sub-configs


# asdict(GPTConfig) as checkpoints saved it before the sub-configs: every field flat, in the old order
_OLD_CHECKPOINT_CONFIG = dict(
    name="debug", vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, attn_dropout=0.0,
    embd_dropout=0.0, bias=True, causal=True, mlp_ratio=4, tie_embeddings=True, attention="sliding_window",
    ffn="moe", depth="stack", attn_window=4, attn_global=[0], moe_experts=4, moe_top_k=1,
    moe_capacity_factor=1.25, moe_eval_capacity_factor=2.0, moe_aux_alpha=0.01, moe_z_loss=1e-3, moe_jitter=0.0,
    moe_expert_dropout=0.0, ut_max_steps=None, act_eps=0.01, act_ponder_cost=0.01,
    activation_checkpointing=False, checkpoint_every=1,
)  # fmt: skip


def test_an_old_checkpoints_flat_config_still_loads() -> None:
    torch.manual_seed(0)
    new = GPTConfig.from_name(
        "debug", attention="sliding_window", sliding={"window": 4, "global_positions": [0]}, ffn="moe",
        moe={"experts": 4},
    )  # fmt: skip
    lm = CausalLM(new)
    hparams = {**lm.hparams, "config": dict(_OLD_CHECKPOINT_CONFIG)}  # what load_from_checkpoint passes back
    with pytest.warns(DeprecationWarning, match=r"'moe_experts' is now moe\.experts"):
        old = CausalLM(**hparams)
    assert old.config == new
    old.model.load_state_dict(lm.model.state_dict())  # the same state-dict keys and shapes
    x = torch.randint(0, 64, (2, 8))
    assert torch.allclose(old.model(x), lm.model(x))
    saved = old.hparams["config"]  # what its own checkpoint will hold: the nested names
    assert "moe" in saved and "moe_experts" not in saved


def _write_recipe(tmp_path, config: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model:\n  class_path: kit.models.gpt.CausalLM\n  init_args:\n    config: {config}\n")
    return str(path)


def test_a_yaml_config_with_old_flat_names_parses_and_converts_with_a_warning(tmp_path) -> None:
    recipe = _write_recipe(tmp_path, "{name: debug, ffn: moe, moe_experts: 4, attn_window: 8}")
    with pytest.warns(DeprecationWarning, match=r"'moe_experts' is now moe\.experts"):
        config = _cli_config(["--config", recipe])
    assert (config.ffn, config.moe.experts, config.sliding.window) == ("moe", 4, 8)


def test_a_yaml_config_with_nested_names_parses_and_overrides_one_field(tmp_path) -> None:
    recipe = _write_recipe(tmp_path, "{name: debug, ffn: moe, moe: {experts: 4}}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        config = _cli_config(["--config", recipe])
    assert isinstance(config.moe, MoEConfig) and config.moe.experts == 4
    override = _cli_config(["--config", recipe, "--model.init_args.config.moe.top_k", "2"])
    assert (override.moe.experts, override.moe.top_k) == (4, 2)
