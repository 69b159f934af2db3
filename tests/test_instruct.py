"""InstructDataModule: exact response-only loss masks, chat templates, packing, and the bad-row report."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import lightning_records

from kit.data.tokenizer import EOS, train_bpe
from kit.datamodules.instruct import PLAIN_TEMPLATE, InstructDataModule, PaddedCollator, encode_example
from kit.datamodules.text import load_tokenizer_folder

TEXT = "the user asks a question and the assistant gives an answer about numbers one two three four five six"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """pytest's ``caplog``, also seeing Lightning's rank-zero logger (see ``conftest.lightning_records``)."""
    yield from lightning_records(caplog)


def _tokenizer(folder: Path, chat_template: str | None = None, bos: str | None = "<s>") -> Path:
    tok = train_bpe([TEXT] * 30, vocab_size=320)
    tok.add_special_tokens(["<s>", "<|im_start|>", "<|im_end|>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": EOS, **({"bos_token": bos} if bos else {})}
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _trained(ids: list[int], labels: list[int]) -> list[int]:
    return [t for t, label in zip(ids, labels) if label != -100]


def test_prompt_response_mask_is_exactly_the_response_and_eos(tmp_path) -> None:
    tf = load_tokenizer_folder(_tokenizer(tmp_path / "tok"))
    enc = tf.tokenizer
    eos, bos = tf.special_ids["eos"], tf.special_ids["bos"]
    prompt, response = "the user asks a question\n", "the answer is four"
    ids, labels = encode_example({"prompt": prompt, "response": response}, tf)
    r_ids = enc.encode(response, add_special_tokens=False).ids
    p_ids = enc.encode(prompt, add_special_tokens=False).ids
    assert ids == [bos, *p_ids, *r_ids, eos]
    assert labels == [-100] * (1 + len(p_ids)) + r_ids + [eos]


def test_chat_template_trains_every_assistant_turn_and_nothing_else(tmp_path) -> None:
    tf = load_tokenizer_folder(_tokenizer(tmp_path / "tok", CHATML))
    enc = tf.tokenizer
    chat = [
        {"role": "system", "content": "answer about numbers"},
        {"role": "user", "content": "one two"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "four"},
        {"role": "assistant", "content": "five six"},
    ]
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    render = lambda m, p: hf.apply_chat_template(m, tokenize=False, add_generation_prompt=p)  # noqa: E731
    ids, labels = encode_example({"messages": chat}, tf, render)
    turn = lambda text: enc.encode(f"{text}<|im_end|>\n", add_special_tokens=False).ids  # noqa: E731
    eos = tf.special_ids["eos"]
    # the template has no eos of its own: one is appended (and trained) after the last assistant turn
    assert _trained(ids, labels) == turn("three") + turn("five six") + [eos]
    assert enc.decode(ids, skip_special_tokens=False).startswith("<|im_start|>system\nanswer about numbers")
    assert len(ids) == len(labels)

    dm = InstructDataModule(
        _jsonl(tmp_path / "chat.jsonl", [{"messages": chat}] * 4), str(tmp_path / "tok"), 64
    )
    dm.setup("fit")
    x, y = dm.train_set[0]
    assert x.tolist() == ids[:-1] and y.tolist() == labels[1:], "targets are the labels shifted by one"


def test_without_a_chat_template_chats_use_the_documented_plain_template(tmp_path) -> None:
    tf = load_tokenizer_folder(_tokenizer(tmp_path / "tok"))
    chat = [{"role": "user", "content": "one two"}, {"role": "assistant", "content": "three"}]
    ids, labels = encode_example({"messages": chat}, tf)
    eos = tf.special_ids["eos"]
    enc = tf.tokenizer
    assert _trained(ids, labels) == [*enc.encode("three", add_special_tokens=False).ids, eos]
    text = enc.decode(ids, skip_special_tokens=False)
    user = PLAIN_TEMPLATE.format(role="User", content="one two")
    assert text.startswith("<s>" + user + "### Assistant:\nthree" + EOS)


def test_bad_rows_are_counted_by_reason_and_reported_once(tmp_path, caplog) -> None:
    tok = _tokenizer(tmp_path / "tok")
    good = {"prompt": "one two", "response": "three"}
    rows = [
        good,
        "{not json",
        [1, 2],
        {"question": "one", "answer": "two"},
        {"prompt": "one", "response": "  "},
        {"messages": [{"role": "user", "content": "one"}]},  # no assistant turn: empty response
        {"messages": "one"},
        {"prompt": "one " * 200, "response": "two"},
        good,
        good,
    ]
    path = _jsonl(tmp_path / "data.jsonl", rows)
    dm = InstructDataModule(path, str(tok), block_size=32, batch_size=2)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    counts = dict(dm.bad_rows.counts)
    assert counts == {
        "invalid JSON": 1,
        "not an object": 1,
        "missing keys": 2,
        "empty response": 2,
        "too long": 1,
    }
    assert dm.bad_rows.places["invalid JSON"] == ["data.jsonl:2"]
    assert dm.bad_rows.places["missing keys"] == ["data.jsonl:4", "data.jsonl:7"]
    reports = [r.getMessage() for r in caplog.records if "bad rows skipped" in r.getMessage()]
    assert len(reports) == 1 and "7 bad rows skipped: invalid JSON 1 (data.jsonl:2)" in reports[0]
    assert len(dm.train_set) + len(dm.val_set) == 3
    assert dm.state_dict()["bad_rows"] == counts

    only_bad = _jsonl(tmp_path / "bad.jsonl", ["{", {"x": 1}])
    with pytest.raises(ValueError, match=r"no usable row .*invalid JSON 1 \(bad.jsonl:1\); missing keys 1"):
        InstructDataModule(only_bad, str(tok)).setup("fit")


@pytest.mark.parametrize("packing", [False, True])
def test_batches_are_input_target_pairs_with_response_only_targets(tmp_path, packing) -> None:
    tok = _tokenizer(tmp_path / "tok")
    rows = [{"prompt": f"question {i} one two", "response": "three four five six"} for i in range(24)]
    dm = InstructDataModule(
        _jsonl(tmp_path / "d.jsonl", rows),
        str(tok),
        block_size=32,
        batch_size=4,
        packing=packing,
        val_fraction=0.25,
    )
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape and x.shape[0] == 4
    if packing:
        assert x.shape[1] == 32 and len(dm.train_set) < 18, "examples share rows"
        assert torch.equal(x[:, 1:][y[:, :-1] != -100], y[:, :-1][y[:, :-1] != -100])
    else:
        assert x.shape[1] < 32, "padded to the longest in the batch, not to block_size"
        assert len(dm.train_set) == 18 and len(dm.val_set) == 6
    response = set(load_tokenizer_folder(tok).tokenizer.encode("three four five six").ids)
    eos = load_tokenizer_folder(tok).special_ids["eos"]
    assert set(y[y != -100].tolist()) <= response | {eos}
    assert (y != -100).any() and (y == -100).any()


def test_padding_targets_are_ignored_and_pad_is_the_tokenizers() -> None:
    x, y = PaddedCollator(7)(
        [(torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])), (torch.tensor([5]), torch.tensor([6]))]
    )
    assert x.tolist() == [[1, 2, 3], [5, 7, 7]] and y.tolist() == [[2, 3, 4], [6, -100, -100]]


def test_the_tokenizer_defaults_to_the_models_folder_and_its_absence_is_explained(tmp_path) -> None:
    tok = _tokenizer(tmp_path / "model")
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "one", "response": "two"}] * 3)

    class _Module:
        hparams = {"init_from": str(tok)}

    class _Trainer:
        lightning_module = _Module()

    dm = InstructDataModule(path)
    dm.trainer = _Trainer()
    dm.setup("fit")
    assert dm.tokenizer_folder.folder == tok
    with pytest.raises(ValueError, match="has no tokenizer: pass data.tokenizer=DIR"):
        InstructDataModule(path).setup("fit")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        InstructDataModule(str(tmp_path / "none*.jsonl"), str(tok)).setup("fit")
    no_eos = tmp_path / "no-eos"
    no_eos.mkdir()
    (no_eos / "tokenizer.json").write_text((tok / "tokenizer.json").read_text().replace(EOS, "<|x|>"))
    with pytest.raises(ValueError, match="names no eos_token"):
        InstructDataModule(path, str(no_eos)).setup("fit")


def test_cross_entropy_ignores_the_masked_targets() -> None:
    # CausalLM's loss is F.cross_entropy with its default ignore_index: masked positions carry no gradient
    logits = torch.randn(1, 3, 5, requires_grad=True)
    y = torch.tensor([[-100, 2, -100]])
    torch.nn.functional.cross_entropy(logits.view(-1, 5), y.view(-1)).backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0
    assert logits.grad[0, 1].abs().sum() > 0


def test_resuming_with_another_tokenizer_file_warns(tmp_path) -> None:
    tok = _tokenizer(tmp_path / "tok")
    dm = InstructDataModule(
        _jsonl(tmp_path / "d.jsonl", [{"prompt": "one", "response": "two"}] * 3), str(tok)
    )
    dm.setup("fit")
    state = dm.state_dict()
    assert state["tokenizer_sha256"] == load_tokenizer_folder(tok).sha256
    dm.load_state_dict(state)  # the same file: silent
    with pytest.warns(UserWarning, match=r"different tokenizer.json .*\(ffffffffffff\)"):
        dm.load_state_dict({**state, "tokenizer_sha256": "f" * 64})
