"""Recipes as a base plus overlays: each overlay's chain, what it changes from its base, how jsonargparse merges
the chain, and the errors for an unknown base and a cycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.cli.main import _rewrite_args, main
from kit.cli.recipes import (
    RECIPES_DIR,
    expand_config,
    list_recipes,
    merge_configs,
    merged_recipe,
    read_header,
    recipe_bases,
)

BASES = {
    "gpt-tiny-moe": "gpt-tiny",
    "gpt-tiny-sliding": "gpt-tiny",
    "gpt-tiny-universal": "gpt-tiny",
    "classifier-adapters": "classifier-finetune",
    "classifier-lora": "classifier-finetune",
    "classifier-prompt": "classifier-finetune",
    "classifier-qlora": "classifier-finetune",
    "sft-qlora": "sft-lora",
}

_LOGGER = "trainer.logger.init_args.name"
_CONFIG = "model.init_args.config"
_PEFT = "model.init_args.peft"
# Everything an overlay's merged config changes from its base's: the values the full recipe files held before they
# became overlays (the model's variant settings written with the sub-config names).
CHANGES: dict[str, dict[str, Any]] = {
    "gpt-tiny-moe": {
        _LOGGER: "gpt-tiny-moe",
        f"{_CONFIG}.ffn": "moe",
        f"{_CONFIG}.moe.experts": 8,
        f"{_CONFIG}.moe.top_k": 1,
        f"{_CONFIG}.moe.capacity_factor": 1.25,
        f"{_CONFIG}.moe.eval_capacity_factor": 2.0,
        f"{_CONFIG}.moe.aux_alpha": 0.01,
        f"{_CONFIG}.moe.z_loss": 0.001,
    },
    "gpt-tiny-sliding": {
        _LOGGER: "gpt-tiny-sliding",
        f"{_CONFIG}.attention": "sliding_window",
        f"{_CONFIG}.sliding.window": 32,
        f"{_CONFIG}.sliding.global_positions": [0],
    },
    "gpt-tiny-universal": {
        _LOGGER: "gpt-tiny-universal",
        f"{_CONFIG}.depth": "universal",
        f"{_CONFIG}.universal.max_steps": 4,
        f"{_CONFIG}.universal.act_eps": 0.01,
        f"{_CONFIG}.universal.ponder_cost": 0.01,
    },
    "classifier-adapters": {
        _LOGGER: "classifier-adapters",
        f"{_PEFT}.method": "adapters",
        f"{_PEFT}.adapter_size": 16,
        f"{_PEFT}.adapter_positions": ["attn", "ffn"],
        "model.init_args.lr": 0.003,
    },
    "classifier-lora": {
        _LOGGER: "classifier-lora",
        f"{_PEFT}.method": "lora",
        f"{_PEFT}.lora_r": 8,
        f"{_PEFT}.lora_alpha": 16,
        f"{_PEFT}.lora_dropout": 0.0,
        f"{_PEFT}.lora_targets": ["qkv", "proj", "fc"],
        "model.init_args.lr": 0.003,
    },
    "classifier-prompt": {
        _LOGGER: "classifier-prompt",
        f"{_PEFT}.method": "prompt",
        f"{_PEFT}.prompt_tokens": 16,
        f"{_PEFT}.prompt_init": "vocab",
        "model.init_args.lr": 0.03,
    },
    "sft-qlora": {_LOGGER: "sft-qlora", f"{_PEFT}.method": "qlora", f"{_PEFT}.quant_type": "nf4"},
    "classifier-qlora": {
        _LOGGER: "classifier-qlora",
        f"{_PEFT}.method": "qlora",
        f"{_PEFT}.quant_type": "nf4",
        f"{_PEFT}.lora_r": 8,
        f"{_PEFT}.lora_alpha": 16,
        f"{_PEFT}.lora_targets": ["qkv", "proj", "fc"],
        "model.init_args.lr": 0.003,
        "model.init_args.optimizer": "adamw8bit",
    },
}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values; lists are leaves, as they replace whole when configs merge."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_variants_are_overlays_and_the_rest_stand_alone() -> None:
    bases = recipe_bases()
    assert {name: base for name, base in bases.items() if base} == BASES
    assert set(bases) == set(list_recipes())
    for name in set(bases) - set(BASES):
        assert [Path(p).stem for p in expand_config(name)] == [name]


@pytest.mark.parametrize("name", sorted(BASES))
def test_each_overlay_expands_to_its_base_then_itself(name: str) -> None:
    chain = expand_config(name)
    assert chain == [str(RECIPES_DIR / f"{BASES[name]}.yaml"), str(RECIPES_DIR / f"{name}.yaml")]
    assert _rewrite_args(["fit", "-c", name, "--trainer.max_steps=5"]) == [
        "fit",
        *(item for path in chain for item in ("-c", path)),
        "--trainer.max_steps=5",
    ]
    assert _rewrite_args(["fit", f"--config={name}"]) == ["fit", *(f"--config={path}" for path in chain)]
    assert read_header(chain[-1])["description"], "an overlay keeps its own '# description:' line"


@pytest.mark.parametrize("name", sorted(BASES))
def test_an_overlay_changes_only_the_keys_it_should(name: str) -> None:
    _, base = merged_recipe(BASES[name])
    _, merged = merged_recipe(name)
    flat_base, flat = _flat(base), _flat(merged)
    assert set(flat_base) <= set(flat), "an overlay never drops a key of its base"
    assert {k: v for k, v in flat.items() if flat_base.get(k, ...) != v} == CHANGES[name]
    # the overlay's own file holds only those keys: everything else is inherited
    own = _flat(yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text()))
    assert own == CHANGES[name]


def test_every_run_folder_keeps_its_recipe_name() -> None:
    for name in list_recipes():
        logger = merged_recipe(name)[1]["trainer"].get("logger")
        if logger:
            assert logger["init_args"]["name"] == name, name


def test_merge_configs_merges_mappings_and_replaces_lists() -> None:
    base = {"trainer": {"callbacks": [{"class_path": "A"}, {"class_path": "B"}], "max_steps": 10}, "seed": 1}
    overlay = {"trainer": {"callbacks": [{"class_path": "C"}]}, "model": {"lr": 0.1}}
    merged = merge_configs([base, overlay])
    assert merged == {
        "trainer": {"callbacks": [{"class_path": "C"}], "max_steps": 10},
        "seed": 1,
        "model": {"lr": 0.1},
    }
    assert base["trainer"]["callbacks"][1] == {"class_path": "B"}, "merging leaves its inputs alone"


def test_a_users_file_names_a_packaged_base_or_a_file_beside_it(tmp_path: Path) -> None:
    mine = _write(tmp_path / "mine.yaml", "# base: gpt-tiny-moe\nmodel:\n  init_args:\n    lr: 0.001\n")
    chain, merged = merged_recipe(str(mine))
    assert chain == [str(RECIPES_DIR / "gpt-tiny.yaml"), str(RECIPES_DIR / "gpt-tiny-moe.yaml"), str(mine)]
    assert merged["model"]["init_args"]["lr"] == 0.001
    assert merged["model"]["init_args"]["config"]["ffn"] == "moe"
    assert merged["trainer"]["max_steps"] == 600
    longer = _write(
        tmp_path / "longer.yaml", "# a comment first\n\n# base: mine.yaml\ntrainer:\n  max_steps: 9\n"
    )
    assert expand_config(str(longer)) == [*chain, str(longer)]
    assert merged_recipe(str(longer))[1]["trainer"]["max_steps"] == 9


def test_only_the_header_names_a_base(tmp_path: Path) -> None:
    late = _write(tmp_path / "late.yaml", "seed_everything: 1\n# base: gpt-tiny\n")
    assert expand_config(str(late)) == [str(late)]
    assert expand_config('{"seed_everything": 3}') == ['{"seed_everything": 3}']


def test_a_base_key_instead_of_a_header_line_says_how_to_write_it(tmp_path: Path) -> None:
    mine = _write(tmp_path / "mine.yaml", "base: gpt-tiny\nseed_everything: 1\n")
    with pytest.raises(
        SystemExit, match=r"'base:' key; name the base in a header comment .*'# base: gpt-tiny'"
    ):
        expand_config(str(mine))
    nested = _write(tmp_path / "nested.yaml", "# base: gpt-tiny\nmodel:\n  base: 1\n")  # not top-level
    assert len(expand_config(str(nested))) == 2


def test_an_unknown_base_is_a_one_line_error_naming_the_recipe(tmp_path: Path) -> None:
    bad = _write(tmp_path / "mine.yaml", "# base: gpt-huge\nseed_everything: 1\n")
    with pytest.raises(
        SystemExit, match=r"recipe 'mine' .* names '# base: gpt-huge', which is neither"
    ) as err:
        expand_config(str(bad))
    assert "\n" not in str(err.value) and "gpt-tiny-moe" in str(err.value)  # it lists the recipes
    with pytest.raises(SystemExit, match="names '# base: gpt-huge'"):
        main(["fit", "--config", str(bad)])


def test_a_cycle_of_bases_is_a_one_line_error_naming_the_recipe(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "# base: b.yaml\n")
    _write(tmp_path / "b.yaml", "# base: c.yaml\n")
    _write(tmp_path / "c.yaml", "# base: a.yaml\n")
    with pytest.raises(
        SystemExit, match=r"recipe 'a': its '# base:' lines form a cycle \(a -> b -> c -> a\)"
    ):
        expand_config(str(tmp_path / "a.yaml"))
    _write(tmp_path / "self.yaml", "# base: self.yaml\n")
    with pytest.raises(SystemExit, match=r"cycle \(self -> self\)"):
        expand_config(str(tmp_path / "self.yaml"))


# -- the chain through jsonargparse: the same config as the merged dict written as one file ---------------------
def _print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["fit", *args, "--print_config"])
    assert done.value.code in (0, None), capsys.readouterr().err[-2000:]
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "name",
    sorted(n for n in BASES if n.startswith(("classifier-", "gpt-tiny-"))),
)
def test_lightning_cli_merges_the_chain_as_the_merged_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    merged_file = _write(tmp_path / "merged.yaml", yaml.safe_dump(merged_recipe(name)[1]))
    chained = _print_config(["--config", name], capsys)
    assert chained == _print_config(["--config", str(merged_file)], capsys)
    assert f"name: {name}\n" in chained  # its own run folder
    if name.startswith("gpt-tiny-"):
        assert "name: tiny\n" in chained  # the base's model config survives under the overlay's keys


def test_a_callback_list_in_an_overlay_replaces_the_base_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    overlay = "# base: gpt-tiny\ntrainer:\n  callbacks:\n    - class_path: kit.callbacks.clipping.GradientClipping\n"
    mine = _write(tmp_path / "mine.yaml", overlay + "      init_args:\n        max_norm: 0.5\n")
    merged = merged_recipe(str(mine))[1]
    assert [c["class_path"] for c in merged["trainer"]["callbacks"]] == [
        "kit.callbacks.clipping.GradientClipping"
    ]
    chained = _print_config(["--config", str(mine)], capsys)
    assert (
        "max_norm: 0.5" in chained and "KitCheckpoint" not in chained and "LearningRateMonitor" not in chained
    )
    merged_file = _write(tmp_path / "merged.yaml", yaml.safe_dump(merged))
    assert chained == _print_config(["--config", str(merged_file)], capsys)
