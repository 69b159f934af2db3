"""temperature_weights, TemperatureSampler, TemperatureMixer."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from conftest import BatchRecorder, make_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from kit.data.sampling import TemperatureMixer, TemperatureSampler, temperature_weights

counts_st = st.lists(st.integers(0, 10_000), min_size=1, max_size=20).filter(lambda c: sum(c) > 0)
temps_st = st.floats(0.1, 20.0)


@given(counts_st, temps_st)
@settings(max_examples=200, deadline=None)
def test_weights_sum_to_one_and_are_monotone(counts, t):
    p = temperature_weights(counts, t)
    assert math.isclose(sum(p), 1.0, rel_tol=1e-9)
    for i in range(len(counts)):
        for j in range(len(counts)):
            if counts[i] > counts[j]:
                assert p[i] > p[j]
            elif counts[i] == counts[j]:
                assert p[i] == pytest.approx(p[j])
        if counts[i] == 0:
            assert p[i] == 0


@given(counts_st)
@settings(max_examples=100, deadline=None)
def test_t1_gives_proportions_and_large_t_flattens(counts):
    total = sum(counts)
    assert temperature_weights(counts, 1.0) == pytest.approx([c / total for c in counts])
    nonzero = sum(c > 0 for c in counts)
    assert temperature_weights(counts, math.inf) == pytest.approx([1 / nonzero if c else 0 for c in counts])
    # flatter: the largest group's share never grows with T
    assert max(temperature_weights(counts, 5.0)) <= max(temperature_weights(counts, 1.0)) + 1e-12


def test_weights_errors():
    with pytest.raises(ValueError, match="temperature=0"):
        temperature_weights([1, 2], 0)
    with pytest.raises(ValueError, match="all counts are zero"):
        temperature_weights([0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        temperature_weights([1, -1])
    # huge counts do not overflow
    assert sum(temperature_weights([1e300, 1e299], 0.1)) == pytest.approx(1.0)


@given(
    st.lists(st.integers(0, 4), min_size=1, max_size=60),
    st.integers(1, 5),
    st.floats(0.5, 5.0),
    st.integers(0, 3),
    st.integers(0, 100),
)
@settings(max_examples=80, deadline=None)
def test_sampler_ranks_disjoint_covering_equal(groups, world, t, epoch, seed):
    samplers = [TemperatureSampler(groups, t, seed=seed, num_replicas=world, rank=r) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    per_rank = [list(s) for s in samplers]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    draw = samplers[0].global_indices(epoch).tolist()
    # positions of the global draw are split disjointly and cover it exactly
    interleaved = [per_rank[r][i] for i in range(len(per_rank[0])) for r in range(world)]
    assert interleaved == draw
    assert len(draw) == world * math.ceil(len(groups) / world)
    assert all(0 <= i < len(groups) for i in draw)


def test_sampler_matches_target_proportions():
    groups = [0] * 9000 + [1] * 900 + [2] * 100
    s = TemperatureSampler(groups, temperature=2.0, num_samples=60_000, seed=3)
    observed = Counter(groups[i] for i in s)
    target = temperature_weights([9000, 900, 100], 2.0)
    for g in range(3):
        assert observed[g] / 60_000 == pytest.approx(target[g], abs=0.01)
    assert s.proportions == pytest.approx(dict(enumerate(target)))
    assert s.natural_proportions[2] == pytest.approx(0.01)
    # within a group, members are drawn uniformly: every one of the 100 small-group samples shows up
    assert len({i for i in s if groups[i] == 2}) == 100


def test_sampler_epochs_seed_and_resume():
    groups = [i % 3 for i in range(50)]
    a, b = TemperatureSampler(groups, 2.0, seed=1), TemperatureSampler(groups, 2.0, seed=1)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0
    assert list(TemperatureSampler(groups, 2.0, seed=2)) != e0

    full = list(TemperatureSampler(groups, 2.0, seed=1))
    s = TemperatureSampler(groups, 2.0, seed=1)
    it = iter(s)
    head = [next(it) for _ in range(17)]
    state = s.state_dict()
    assert state["position"] == 17
    fresh = TemperatureSampler(groups, 2.0, seed=1)
    fresh.load_state_dict(state)
    assert head + list(fresh) == full
    assert fresh.state_dict()["position"] == 0  # a finished epoch rewinds
    with pytest.raises(ValueError, match="seed"):
        TemperatureSampler(groups, 2.0, seed=9).load_state_dict(state)


def test_sampler_validation():
    with pytest.raises(ValueError, match="empty"):
        TemperatureSampler([])
    with pytest.raises(ValueError, match="rank=2"):
        TemperatureSampler([0, 1], num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_samples=0"):
        TemperatureSampler([0, 1], num_samples=0)


def test_sampler_in_dataloader_and_stateful_dataloader_resume():
    from torchdata.stateful_dataloader import StatefulDataLoader

    groups = [0] * 40 + [1] * 8
    ds = TensorDataset(torch.arange(48))
    batches = [
        b[0].tolist() for b in DataLoader(ds, batch_size=4, sampler=TemperatureSampler(groups, 3.0, seed=5))
    ]
    assert sum(len(b) for b in batches) == 48

    loader = StatefulDataLoader(ds, batch_size=4, sampler=TemperatureSampler(groups, 3.0, seed=5))
    it = iter(loader)
    first = [next(it)[0].tolist() for _ in range(5)]
    state = loader.state_dict()
    loader2 = StatefulDataLoader(ds, batch_size=4, sampler=TemperatureSampler(groups, 3.0, seed=5))
    loader2.load_state_dict(state)
    rest = [b[0].tolist() for b in loader2]
    assert first + rest == batches


def test_mixer_proportions_exhaustion_and_resume():
    a, b = list(range(1000)), [f"b{i}" for i in range(100)]
    mix = TemperatureMixer(
        {"a": a, "b": b}, sizes={"a": 1000, "b": 100}, temperature=5.0, seed=0, exhausted="cycle"
    )
    it = iter(mix)
    head = [next(it) for _ in range(2000)]
    share_b = sum(isinstance(x, str) for x in head) / 2000
    assert share_b == pytest.approx(mix.proportions["b"], abs=0.03)
    assert mix.proportions["b"] == pytest.approx(temperature_weights([1000, 100], 5.0)[1])

    drop = TemperatureMixer({"a": a[:10], "b": b[:3]}, sizes={"a": 10, "b": 3}, seed=1)
    items = list(drop)
    assert sorted(map(str, items)) == sorted(map(str, a[:10] + b[:3]))
    stop = TemperatureMixer({"a": a[:100], "b": b[:3]}, sizes={"a": 10, "b": 10}, seed=1, exhausted="stop")
    out = list(stop)
    assert sum(isinstance(x, str) for x in out) == 3 and len(out) < 50  # ends when "b" runs dry

    ref = list(TemperatureMixer({"a": a[:50], "b": b[:20]}, sizes={"a": 50, "b": 20}, seed=4))
    m = TemperatureMixer({"a": a[:50], "b": b[:20]}, sizes={"a": 50, "b": 20}, seed=4)
    it = iter(m)
    head = [next(it) for _ in range(30)]
    state = m.state_dict()
    m2 = TemperatureMixer({"a": a[:50], "b": b[:20]}, sizes={"a": 50, "b": 20}, seed=4)
    m2.load_state_dict(state)
    assert head + list(m2) == ref


def test_mixer_validation():
    with pytest.raises(ValueError, match="sizes lacks"):
        TemperatureMixer({"a": [1]}, sizes={})
    with pytest.raises(ValueError, match="exhausted"):
        TemperatureMixer({"a": [1]}, sizes={"a": 1}, exhausted="loop")


def test_lightning_sets_epoch_and_does_not_rewrap():
    from torch.utils.data.distributed import DistributedSampler

    groups = [0] * 20 + [1] * 4
    sampler = TemperatureSampler(groups, temperature=2.0, seed=0)
    assert isinstance(sampler, DistributedSampler)  # Lightning leaves it alone under DDP
    model = BatchRecorder()
    trainer = make_trainer(max_steps=-1, max_epochs=2)
    trainer.fit(model, DataLoader(TensorDataset(torch.arange(24)), batch_size=4, sampler=sampler))
    assert sampler.epoch == 1  # Lightning called set_epoch(1) for the second epoch
    expected = sampler.global_indices(0).tolist() + sampler.global_indices(1).tolist()
    assert model.seen == expected


def test_mixer_splits_across_dataloader_workers():
    a, b = list(range(60)), list(range(1000, 1020))
    mix = TemperatureMixer({"a": a, "b": b}, sizes={"a": 60, "b": 20}, temperature=2.0, seed=0)
    items = [int(x) for batch in DataLoader(mix, batch_size=5, num_workers=2) for x in batch]
    assert sorted(items) == a + b  # every item exactly once over the two workers
    unsplit = TemperatureMixer({"a": a, "b": b}, sizes={"a": 60, "b": 20}, split=False)
    items = [int(x) for batch in DataLoader(unsplit, batch_size=5, num_workers=2) for x in batch]
    assert len(items) == 2 * 80  # without splitting each worker serves everything


def test_mid_epoch_resume_through_lightning_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader():
        sampler = TemperatureSampler([0] * 40 + [1] * 8, temperature=3.0, seed=11)
        return StatefulDataLoader(TensorDataset(torch.arange(48)), batch_size=4, sampler=sampler)

    full = BatchRecorder()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5, save_top_k=-1)
    make_trainer(tmp_path, [ckpt_cb], max_steps=8, enable_checkpointing=True).fit(full, loader())
    ckpt = next(tmp_path.glob("*step=5*.ckpt"))  # saved 5 of 12 batches into epoch 0
    resumed = BatchRecorder()
    make_trainer(tmp_path, max_steps=8).fit(resumed, loader(), ckpt_path=ckpt)
    assert resumed.seen == full.seen[20:]  # the killed run continues with exactly the next samples


# -- the sampler's contract: groups with replacement (the mix), members without replacement within a group --


@given(
    groups=st.lists(st.integers(0, 4), min_size=1, max_size=120),
    t=st.floats(0.5, 8.0),
    world=st.integers(1, 4),
    seed=st.integers(0, 50),
)
def test_sampler_members_repeat_only_after_their_whole_group(groups, t, world, seed):
    s = TemperatureSampler(groups, temperature=t, seed=seed, num_replicas=world, rank=0)
    drawn = s.global_indices(0).tolist()
    size = Counter(groups)
    per_group = Counter(groups[i] for i in drawn)
    times = Counter(drawn)
    for g, k in per_group.items():
        members = [i for i, gi in enumerate(groups) if gi == g]
        counts = [times.get(i, 0) for i in members]
        # dealt from whole permutations: counts differ by at most one, so at most ceil(k / n) each
        assert max(counts) - min(counts) <= 1
        assert max(counts) == -(-k // size[g])
        if k <= size[g]:  # a downsampled group never repeats a sample, on one rank or across ranks
            assert max(counts) == 1


def test_sampler_ranks_share_no_sample_of_a_downsampled_group():
    groups = [0] * 900 + [1] * 100  # T=3 draws group 0 about 593 times of its 900: downsampled
    shares = [
        set(TemperatureSampler(groups, 3.0, seed=1, num_replicas=2, rank=r)) for r in range(2)
    ]
    assert not {i for i in shares[0] & shares[1] if groups[i] == 0}


class _CountingSeq:
    """A sequence that counts how often each item is read."""

    def __init__(self, n: int, base: int) -> None:
        self.n, self.base, self.reads = n, base, Counter()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.reads[i] += 1
        return self.base + i


@pytest.mark.parametrize("kind", ["sequence", "callable"])
def test_mixer_reads_each_item_once_per_epoch_across_readers(kind, monkeypatch):
    a, b = _CountingSeq(60, 0), _CountingSeq(20, 1000)
    opened: list[tuple[int, int]] = []

    def part(seq):  # a callable source opens only its own part, as a shard lister would
        def open_part(index: int, count: int):
            opened.append((index, count))
            return (seq[i] for i in range(index, len(seq), count))

        return open_part

    sources = {"a": a, "b": b} if kind == "sequence" else {"a": part(a), "b": part(b)}
    readers, served = 3, []
    for index in range(readers):  # 3 readers = e.g. 3 ranks x 1 worker, or 1 rank x 3 workers
        mix = TemperatureMixer(sources, sizes={"a": 60, "b": 20}, seed=0)
        monkeypatch.setattr(mix, "_part", lambda i=index: (i, readers))
        served += list(mix)
    assert sorted(served) == list(range(60)) + list(range(1000, 1020))  # every item served once
    assert set(a.reads.values()) == {1} and set(b.reads.values()) == {1}  # and read once
    assert kind == "sequence" or sorted(opened) == [(i, 3) for i in range(3) for _ in range(2)]


def test_mixer_warns_that_a_plain_iterable_is_read_by_every_reader(monkeypatch):
    mix = TemperatureMixer({"a": iter(range(9))}, sizes={"a": 9}, seed=0)
    monkeypatch.setattr(mix, "_part", lambda: (1, 3))
    with pytest.warns(UserWarning, match="walks all of it"):
        assert list(mix) == [1, 4, 7]
