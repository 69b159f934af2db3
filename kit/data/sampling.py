"""Temperature-scaled resampling of long-tailed sources or classes.

``temperature_weights`` turns group sizes into sampling probabilities ``p_i ∝ n_i ** (1/T)``: ``T=1`` samples
in proportion to size, ``T -> inf`` uniformly over groups (the multilingual-BERT/XLM/T5 recipe, with T around
2-5 in practice). ``TemperatureSampler`` applies that to a map-style dataset (distributed-aware, seeded,
resumable mid-epoch); ``TemperatureMixer`` mixes several iterable streams with the same weights.

Example:
    >>> [round(p, 3) for p in temperature_weights([900, 90, 10], temperature=1.0)]
    [0.9, 0.09, 0.01]
    >>> [round(p, 3) for p in temperature_weights([900, 90, 10], temperature=3.0)]
    [0.593, 0.275, 0.132]
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset
from torch.utils.data.distributed import DistributedSampler

__all__ = ["TemperatureMixer", "TemperatureSampler", "temperature_weights"]


def temperature_weights(counts: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Sampling probabilities ``p_i = n_i^(1/T) / sum_j n_j^(1/T)``.

    Groups with count 0 get probability 0. ``temperature=math.inf`` gives the uniform distribution over the
    non-empty groups.

    Args:
        counts: group sizes (documents, tokens, bytes: anything proportional to size), each >= 0.
        temperature: T > 0.

    Returns:
        Probabilities summing to 1, in the order of ``counts``.

    Raises:
        ValueError: ``temperature <= 0``, a negative count, or all counts zero.
    """
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (1 = proportional, larger = flatter)")
    counts = [float(c) for c in counts]
    if any(c < 0 or math.isnan(c) for c in counts):
        raise ValueError(f"counts must be >= 0, got {counts}")
    top = max(counts, default=0.0)
    if top <= 0:
        raise ValueError(f"all counts are zero ({counts}); there is nothing to sample")
    # Scale by the largest count first so n^(1/T) cannot overflow for huge token counts.
    alpha = 0.0 if math.isinf(temperature) else 1.0 / temperature
    raw = [(c / top) ** alpha if c > 0 else 0.0 for c in counts]
    total = sum(raw)
    return [r / total for r in raw]


def _dist_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    dist = torch.distributed
    ready = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if ready else 1
    if rank is None:
        rank = dist.get_rank() if ready else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank={rank} must lie in [0, num_replicas={num_replicas})")
    return num_replicas, rank


class TemperatureSampler(DistributedSampler):
    """Map-style sampler: groups drawn with temperature weights, members without replacement within a group.

    Each epoch draws one global sequence of ``num_replicas * len(self)`` indices from a generator seeded
    with ``seed + epoch``. The group of each position is drawn from ``temperature_weights(group sizes, T)``
    (with replacement: that is what sets the mix). The members of each group are dealt from a random
    permutation of the group, so within an epoch:

    - a group drawn at most as often as it has members (a downsampled group) yields distinct samples;
    - an upsampled group (drawn ``k > n`` times) runs through whole permutations, so each member appears
      ``floor(k/n)`` or ``ceil(k/n)`` times, never more.

    Rank ``r`` takes positions ``r, r + R, r + 2R, ...`` of that sequence, so the ranks' shares are disjoint
    slices of one draw with equal length; two ranks can hold the same sample only when its group is
    upsampled, and then no more often than the counts above.

    The position advances as indices are yielded; ``state_dict()`` taken mid-epoch and loaded into a fresh
    sampler resumes with the very next index (``torchdata``'s ``StatefulDataLoader`` calls these methods
    itself). Note that a plain ``DataLoader`` prefetches, so the sampler runs slightly ahead of training.

    It subclasses ``DistributedSampler`` (without its dataset-based logic) so that Lightning recognises it as
    already distributed: it does not wrap it again under DDP, and it calls ``set_epoch`` every epoch.

    Args:
        group_ids: ``group_ids[i]`` is the source or class of sample ``i`` (any hashable values).
        temperature: T > 0; 1 keeps natural proportions, larger flattens toward uniform over groups.
        num_samples: samples per epoch over all ranks; default ``len(group_ids)``. Rounded up to a
            multiple of ``num_replicas``.
        seed: base seed; every rank must use the same one.
        num_replicas: world size; default from ``torch.distributed`` if initialised, else 1.
        rank: this process's rank; default from ``torch.distributed`` if initialised, else 0.

    Raises:
        ValueError: empty ``group_ids``, bad temperature, bad ``num_samples`` or rank.

    Example:
        >>> s = TemperatureSampler([0] * 90 + [1] * 10, temperature=2.0, seed=0)
        >>> {g: round(p, 3) for g, p in s.proportions.items()}
        {0: 0.75, 1: 0.25}
        >>> len(list(s))
        100
    """

    def __init__(
        self,
        group_ids: Sequence[Any],
        temperature: float = 1.0,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if len(group_ids) == 0:
            raise ValueError("group_ids is empty; pass one group id per dataset sample")
        # DistributedSampler.__init__ needs a dataset and an initialised process group; set its fields directly.
        self.dataset, self.shuffle, self.drop_last = None, True, False
        # World size and rank are resolved when used, not here: a sampler built before the process group
        # exists (e.g. at the top of a DDP script) must still split the data once training starts.
        self._replicas_arg, self._rank_arg = num_replicas, rank
        _dist_defaults(num_replicas, rank)  # validate explicit values now
        total = len(group_ids) if num_samples is None else num_samples
        if total < 1:
            raise ValueError(f"num_samples={num_samples} must be >= 1")
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.epoch = 0
        self._position = 0
        self.groups: list[Any] = list(dict.fromkeys(group_ids))
        code = {g: i for i, g in enumerate(self.groups)}
        codes = torch.tensor([code[g] for g in group_ids], dtype=torch.long)
        self.counts: list[int] = torch.bincount(codes, minlength=len(self.groups)).tolist()
        self._weights = torch.tensor(temperature_weights(self.counts, self.temperature), dtype=torch.double)
        self._order = torch.argsort(codes, stable=True)  # sample indices grouped by group code
        self._sizes = torch.tensor(self.counts, dtype=torch.long)
        self._starts = torch.cumsum(self._sizes, 0) - self._sizes
        self.requested_samples = total

    @property
    def num_replicas(self) -> int:
        """World size: the constructor's value, else ``torch.distributed``'s (1 when not initialised)."""
        return _dist_defaults(self._replicas_arg, self._rank_arg)[0]

    @property
    def rank(self) -> int:
        return _dist_defaults(self._replicas_arg, self._rank_arg)[1]

    @property
    def num_samples(self) -> int:
        """Samples per rank per epoch."""
        return math.ceil(self.requested_samples / self.num_replicas)

    @property
    def total_size(self) -> int:
        """Samples per epoch over all ranks (a multiple of the world size)."""
        return self.num_samples * self.num_replicas

    @property
    def proportions(self) -> dict[Any, float]:
        """Effective share of each group in the draws: ``{group: p}`` (the expected per-epoch mix)."""
        return {g: float(p) for g, p in zip(self.groups, self._weights.tolist())}

    @property
    def natural_proportions(self) -> dict[Any, float]:
        """Each group's share of the dataset itself, for comparison with ``proportions``."""
        n = sum(self.counts)
        return {g: c / n for g, c in zip(self.groups, self.counts)}

    def global_indices(self, epoch: int | None = None) -> torch.Tensor:
        """The whole epoch's draw over all ranks (``total_size`` indices); rank r owns ``[r::R]``.

        The group of each position is drawn with replacement (the temperature mix); the members of a group
        are then dealt from a fresh random permutation of that group, so a member repeats only after every
        member of its group has been dealt (a new permutation follows for an upsampled group).
        """
        g = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        group = torch.multinomial(self._weights, self.total_size, replacement=True, generator=g)
        out = torch.empty(self.total_size, dtype=torch.long)
        for code in torch.unique(group).tolist():  # sorted, so the draw is deterministic
            where = (group == code).nonzero().squeeze(1)
            size = int(self._sizes[code])
            rounds = -(-where.numel() // size)
            deal = torch.cat([torch.randperm(size, generator=g) for _ in range(rounds)])[: where.numel()]
            out[where] = self._order[self._starts[code] + deal]
        return out

    def __iter__(self) -> Iterator[int]:
        replicas, rank = _dist_defaults(self._replicas_arg, self._rank_arg)
        mine = self.global_indices()[rank::replicas].tolist()
        start = self._position
        for i in range(start, len(mine)):
            self._position = i + 1
            yield mine[i]
        # A finished epoch leaves position 0, so the next __iter__ (next epoch) starts at the beginning.
        self._position = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: the draw depends on ``seed + epoch``. Resets the position unless the epoch is unchanged."""
        if epoch != self.epoch:
            self._position = 0
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "seed", "num_samples", "num_replicas", "temperature"}``."""
        return {
            "epoch": self.epoch,
            "position": self._position,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "num_replicas": self.num_replicas,
            "temperature": self.temperature,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``'s epoch and position.

        Raises:
            ValueError: the state came from a sampler with a different seed, size, world size or temperature,
                so its position would point into a different sequence.
        """
        for key in ("seed", "num_samples", "num_replicas", "temperature"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"state {key}={state[key]} differs from this sampler's {key}={getattr(self, key)}; "
                    "build the sampler with the same arguments before loading its state"
                )
        self.epoch = int(state["epoch"])
        self._position = int(state["position"])


class TemperatureMixer(IterableDataset):
    """Interleave several iterable sources, picking the next source with temperature weights.

    Args:
        sources: ``{name: iterable | sequence | callable(index, count)}``; each is re-opened when the mixer
            starts or cycles (see ``split`` for how readers share it).
        sizes: ``{name: size}`` used for the weights (documents, tokens, bytes); streams rarely know their
            length, so it is passed in. Missing names raise.
        temperature: T > 0 as in ``temperature_weights``.
        seed: seed of the source choice; the same seed gives the same interleaving.
        exhausted: what happens when a source runs out: ``"drop"`` (renormalise over the rest; the stream ends
            when all are empty), ``"stop"`` (end the stream), or ``"cycle"`` (restart it; the stream is
            infinite).
        split: in DataLoader workers and under ``torch.distributed``, the n = world size x workers readers
            share each source, and each seeds its choices with its own index, so no item is served twice.
            How a source is shared decides what each reader reads:

            - a sequence (``len`` and indexing: a list, a map-style ``Dataset``): reader i indexes items
              ``i, i + n, ...`` only;
            - a callable ``source(index, count) -> iterable`` (e.g. one that opens every count-th shard):
              called with the reader's part, it reads only that part;
            - any other iterable: every reader must walk the whole stream and keep every n-th item, so each
              item is read n times; the mixer warns once. Pass a callable or a sequence instead.

            Turn ``split`` off when the sources split themselves (e.g. webdataset pipelines with
            ``split_by_node``/``split_by_worker``).

    ``state_dict()`` records the choice RNG state and how many items each source gave, and ``load_state_dict``
    fast-forwards each source by that count, so a resumed stream continues exactly (in the process that
    iterates it: with DataLoader workers, use ``torchdata``'s ``StatefulDataLoader``, which calls these
    methods inside each worker).

    Example:
        >>> mix = TemperatureMixer({"a": range(3), "b": "xy"}, sizes={"a": 3, "b": 2}, seed=0)
        >>> sorted(map(str, mix))
        ['0', '1', '2', 'x', 'y']
    """

    _MODES = ("drop", "stop", "cycle")

    def __init__(
        self,
        sources: Mapping[str, Iterable[Any] | Callable[[int, int], Iterable[Any]]],
        sizes: Mapping[str, float],
        temperature: float = 1.0,
        seed: int = 0,
        exhausted: str = "drop",
        split: bool = True,
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("sources is empty; pass {name: iterable}")
        missing = [n for n in sources if n not in sizes]
        if missing:
            raise ValueError(f"sizes lacks {missing}; give a size for every source")
        if exhausted not in self._MODES:
            raise ValueError(f"exhausted={exhausted!r}; choose one of {self._MODES}")
        self.sources = dict(sources)
        self.names = list(self.sources)
        self.weights = dict(zip(self.names, temperature_weights([sizes[n] for n in self.names], temperature)))
        self.seed, self.exhausted, self.split = seed, exhausted, split
        self.counts: dict[str, int] = {n: 0 for n in self.names}
        self._rng = random.Random(seed)
        self._resume: dict[str, int] | None = None
        self._warned: set[str] = set()

    @property
    def proportions(self) -> dict[str, float]:
        """Target share of each source: ``{name: p}``."""
        return dict(self.weights)

    def _part(self) -> tuple[int, int]:
        """(index, count) of this reader among all ranks x DataLoader workers."""
        if not self.split:
            return 0, 1
        replicas, rank = _dist_defaults(None, None)
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, replicas * nw

    def _raw(self, name: str) -> Iterator[Any]:
        index, count = self._part()
        source = self.sources[name]
        if callable(source) and not hasattr(source, "__iter__"):
            return iter(source(index, count))
        if count == 1:
            return iter(source)
        if isinstance(source, Sequence) or (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            return (source[i] for i in range(index, len(source), count))
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"TemperatureMixer: source {name!r} is a plain iterable, so each of the {count} readers walks all of "
                "it and keeps every n-th item; pass a sequence or a callable (index, count) -> iterable so each "
                "reader reads only its own part",
                stacklevel=2,
            )
        return itertools.islice(iter(source), index, None, count)

    def _open(self, name: str, skip: int = 0) -> Iterator[Any]:
        it = self._raw(name)
        for _ in range(skip):
            try:
                next(it)
            except StopIteration:
                if self.exhausted != "cycle":
                    break
                it = self._raw(name)
                next(it, None)
        return it

    def __iter__(self) -> Iterator[Any]:
        skips = self._resume or {}
        self._resume = None
        if not skips:
            self.counts = {n: 0 for n in self.names}
            self._rng = random.Random(self.seed + 1_000_003 * self._part()[0])
        iters = {n: self._open(n, skips.get(n, 0)) for n in self.names}
        active = [n for n in self.names if self.weights[n] > 0]
        while active:
            name = self._rng.choices(active, weights=[self.weights[n] for n in active])[0]
            try:
                item = next(iters[name])
            except StopIteration:
                if self.exhausted == "stop":
                    return
                if self.exhausted == "drop":
                    active.remove(name)
                    continue
                iters[name] = self._open(name)
                try:
                    item = next(iters[name])
                except StopIteration:  # an empty source cannot be cycled
                    active.remove(name)
                    continue
            self.counts[name] += 1
            yield item

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "rng": self._rng.getstate(), "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume after the items already counted in ``state`` (sources are fast-forwarded on next ``iter``)."""
        self.counts = dict(state["counts"])
        version, internal, gauss = state["rng"]  # lists after a JSON round trip; setstate wants tuples
        self._rng.setstate((version, tuple(internal), gauss))
        self._resume = dict(self.counts)
