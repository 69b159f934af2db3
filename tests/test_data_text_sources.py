"""TextDataModule with several named sources and temperature sampling, and text augmentation in setup."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import BatchRecorder, make_trainer

from kit.data.sampling import TemperatureSampler, temperature_weights
from kit.datamodules.text import TextDataModule


def _write(folder, name: str, n_docs: int, words: int, vocab: list[str]) -> str:
    d = folder / name
    d.mkdir()
    for i in range(n_docs):
        (d / f"{i}.txt").write_text(" ".join(vocab[(i + k * 5) % len(vocab)] for k in range(words)))
    return str(d / "*.txt")


@pytest.fixture
def sources(tmp_path) -> dict[str, str]:
    return {
        "big": _write(tmp_path, "big", 12, 600, [f"alpha{i}" for i in range(20)]),
        "small": _write(tmp_path, "small", 4, 150, [f"omega{i}" for i in range(20)]),
    }


def test_sources_temperature_flattens_and_is_logged(sources, tmp_path):
    kw = {
        "vocab_size": 300,
        "block_size": 16,
        "batch_size": 8,
        "tokenizer_dir": str(tmp_path / "tok"),
        "val_fraction": 0.2,
    }
    dm1 = TextDataModule(sources=sources, temperature=1.0, **kw)
    dm1.setup("fit")
    counts = dm1.source_counts
    assert set(counts) == {"big", "small"} and counts["big"] > 3 * counts["small"]
    assert sum(counts.values()) == len(dm1.train_set)
    assert dm1.source_proportions["big"] == pytest.approx(dm1.natural_proportions["big"])

    dm3 = TextDataModule(sources=sources, temperature=3.0, **kw)
    dm3.setup("fit")
    expected = temperature_weights([counts["big"], counts["small"]], 3.0)
    assert dm3.source_proportions["small"] == pytest.approx(expected[1])
    assert dm3.source_proportions["small"] > dm3.natural_proportions["small"]

    loader = dm3.train_dataloader()
    assert isinstance(loader.sampler, TemperatureSampler) and len(loader.sampler) == len(dm3.train_set)
    drawn = Counter(dm3.train_groups[i] for _ in range(20) for i in loader.sampler)
    share = drawn["small"] / sum(drawn.values())
    assert share == pytest.approx(expected[1], abs=0.05)

    # the labels are right: blocks of the "small" source hold omega tokens only (or the boundary block)
    tok = dm3.tokenizer
    small_blocks = [i for i, g in enumerate(dm3.train_groups) if g == "small"]
    text = tok.decode(dm3.train_set[small_blocks[-1]][0].tolist())
    assert "omega" in text and "alpha" not in text


def test_sources_from_topics_long_tail(tmp_path):
    dm = TextDataModule(
        sources_from_topics=True, temperature=5.0, vocab_size=400, block_size=32, tokenizer_dir=str(tmp_path)
    )
    dm.setup("fit")
    assert 40 < len(dm.source_counts) <= 79
    nat, eff = dm.natural_proportions, dm.source_proportions
    biggest = max(nat, key=nat.get)
    smallest = min(nat, key=nat.get)
    assert eff[biggest] < nat[biggest] and eff[smallest] > nat[smallest]
    assert max(eff.values()) / min(eff.values()) < max(nat.values()) / min(nat.values())


def test_trains_and_logs_proportions(sources, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    dm = TextDataModule(
        sources=sources, temperature=2.0, vocab_size=300, block_size=16, tokenizer_dir=str(tmp_path / "t")
    )
    trainer = make_trainer(tmp_path, max_steps=3, logger=CSVLogger(tmp_path / "logs"), limit_val_batches=0)
    trainer.fit(BatchRecorder(), datamodule=dm)
    metrics = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "data/source_p/small" in metrics.splitlines()[0]


def test_augmentation_adds_copies_but_not_to_the_tokenizer(tmp_path, sources):
    kw = {"vocab_size": 300, "block_size": 16, "tokenizer_dir": str(tmp_path / "tok")}
    plain = TextDataModule(paths=sources["big"], **kw)
    plain.setup("fit")
    aug = TextDataModule(paths=sources["big"], augment_p=1.0, **kw)
    aug.setup("fit")
    assert aug.augmented_docs == len(plain.train_texts)
    assert len(aug.train_texts) == 2 * len(plain.train_texts)
    assert aug.tokenizer_path == plain.tokenizer_path  # tokenizer trained on the originals only
    assert len(aug.train_set) > len(plain.train_set)
    multi = TextDataModule(sources=sources, augment_p=0.5, **kw)
    multi.setup("fit")
    assert 0 < multi.augmented_docs < len(multi.train_texts)


def test_source_argument_errors(tmp_path, sources):
    with pytest.raises(ValueError, match="either paths or sources"):
        TextDataModule(paths="x.txt", sources=sources)
    with pytest.raises(ValueError, match="not both"):
        TextDataModule(sources=sources, sources_from_topics=True)
    with pytest.raises(ValueError, match="temperature=0"):
        TextDataModule(sources=sources, temperature=0)
    with pytest.raises(ValueError, match="augment_p"):
        TextDataModule(augment_p=2)
    with pytest.raises(FileNotFoundError):
        TextDataModule(sources={"a": str(tmp_path / "none-*.txt")}, tokenizer_dir=str(tmp_path)).setup("fit")
