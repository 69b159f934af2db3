"""What `kit` leaves behind for a user: a final validation, a test split that is not validation, predictions
on disk, one-line errors, and a progress bar label that never reads `Epoch 13/-2`."""

from __future__ import annotations

import json

import pytest

from kit.cli.main import main, one_line
from kit.cli.progress import train_description

FAST = [
    "--trainer.max_steps=5",  # far below the recipe's val_check_interval (150): no validation during fit
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.limit_predict_batches=2",
    "--trainer.enable_progress_bar=false",
    "--model.init_args.config.n_layer=1",
    "--model.init_args.config.n_embd=32",
    "--model.init_args.config.n_head=2",
    "--model.init_args.config.block_size=32",
    "--model.init_args.warmup_steps=2",
    "--data.init_args.vocab_size=300",
    "--data.init_args.block_size=32",
    "--data.init_args.batch_size=4",
]


@pytest.mark.slow  # four CLI runs: ~25 s idle, a minute on a busy machine
def test_short_fit_ends_validated_and_test_and_predict_write_their_own_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", *FAST]) == 0
    out = capsys.readouterr().out
    assert "val loss:" in out and "unigram baseline val loss" in out  # the final validation ran
    # each fit gets its own run folder; this is the first one under a fresh tmp_path
    last = tmp_path / "runs/gpt-tiny/version_0/checkpoints/last.ckpt"
    assert last.is_file(), sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt"))
    assert main(["validate", *FAST, "--ckpt_path", str(last)]) == 0
    val_out = capsys.readouterr().out
    assert main(["test", *FAST, "--ckpt_path", str(last)]) == 0
    test_out = capsys.readouterr().out

    def metric(text: str, name: str) -> float:
        line = next(line for line in text.splitlines() if name in line)
        return float(line.split("│")[2].strip())

    assert metric(test_out, "test/loss") != metric(val_out, "val/loss")  # a real test split
    target = tmp_path / "preds.jsonl"
    assert main(["predict", *FAST, "--ckpt_path", str(last), "--predictions", str(target)]) == 0
    assert f"kit predict: wrote 8 rows to {target}" in capsys.readouterr().out
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 8 and {"input_ids", "predicted_ids", "input_text", "predicted_text", "loss"} <= set(
        rows[0]
    )
    assert len(rows[0]["predicted_ids"]) == 32 and isinstance(rows[0]["input_text"], str)


def test_config_and_path_errors_are_one_line_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--data.init_args.block_size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "kit fit: error: block_size=0 must be >= 1",
        "  (full traceback: add --debug, or set KIT_DEBUG=1)",
    ]
    assert main(["fit", "--data.init_args.paths", "nomatch/*.txt"]) == 2
    assert "glob 'nomatch/*.txt' matched no files" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["fit", "--debug", "--data.init_args.paths", "nomatch/*.txt"])


def test_one_line_takes_the_error_that_started_the_chain():
    try:
        try:
            raise ValueError("block_size=0 must be >= 1")
        except ValueError as inner:
            raise ValueError("Does not validate against any of the Union subtypes\n...") from inner
    except ValueError as outer:
        assert one_line(outer) == "block_size=0 must be >= 1"


@pytest.mark.parametrize("none_first", [True, False])
def test_one_line_names_the_optional_types_own_error_whichever_subtype_jsonargparse_tried_first(none_first):
    # the Union error as jsonargparse builds it: older releases try None first in Optional[X] and chain the
    # "Expected a NoneType" error, newer ones try X first and chain X's own error
    from jsonargparse._typehints import raise_union_unexpected_value

    try:
        raise ValueError("Expected a <class 'NoneType'>. Got value: Namespace(block_size=0)")
    except ValueError as err:
        rejected = err
    try:
        raise ValueError("block_size=0 must be >= 1;\nlower --data.init_args.block_size")
    except ValueError as err:
        own = err
    errors = [rejected, own] if none_first else [own, rejected]
    subtypes = [type(None), int] if none_first else [int, type(None)]
    try:
        raise_union_unexpected_value(subtypes, "Namespace(block_size=0)", errors)
    except ValueError as union:
        assert one_line(union) == "block_size=0 must be >= 1; lower --data.init_args.block_size"


def test_progress_label_is_by_step_when_steps_bound_the_run():
    assert train_description(13, -1, 650, 1000) == "Epoch 13 · step 650/1000"
    assert train_description(3, 10, 40, -1) == "Epoch 3/9"
    assert train_description(0, None, 0, -1) == "Epoch 0"
