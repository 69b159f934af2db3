import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kit.data.packing import pack_blocks, split_documents

docs = st.lists(st.lists(st.integers(0, 50), min_size=0, max_size=40), min_size=1, max_size=12)


@given(docs, st.integers(1, 16))
def test_packing_loses_and_duplicates_no_token(token_lists, block_size) -> None:
    stream = [t for ids in token_lists for t in [*ids, 99]]
    if (len(stream) - 1) // block_size < 1:
        with pytest.raises(ValueError, match="exceeds the corpus"):
            pack_blocks(token_lists, block_size, eos_id=99)
        return
    blocks = pack_blocks(token_lists, block_size, eos_id=99)
    assert blocks.shape[1] == block_size + 1
    # inputs of consecutive rows tile the stream exactly once, in order
    inputs = blocks[:, :-1].reshape(-1).tolist()
    targets = blocks[:, 1:].reshape(-1).tolist()
    n = len(inputs)
    assert inputs == stream[:n]
    assert targets == stream[1 : n + 1]
    assert len(stream) - n - 1 < block_size  # only the ragged tail is dropped


def test_block_size_error_says_the_sizes() -> None:
    with pytest.raises(ValueError, match=r"block_size=64 exceeds the corpus \(11 tokens\)"):
        pack_blocks([list(range(10))], 64, eos_id=0)


@given(st.integers(2, 200), st.floats(0.01, 0.99), st.integers(0, 10))
def test_document_split_is_disjoint_covering_and_seeded(n, frac, seed) -> None:
    names = [f"d{i}" for i in range(n)]
    train, val = split_documents(names, frac, seed)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(names)
    assert train and val
    assert (train, val) == split_documents(names, frac, seed)


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_documents(["only"], 0.1)
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        split_documents(["a", "b"], 1.5)


def test_pack_returns_long_rows() -> None:
    blocks = pack_blocks([[1, 2, 3], [4, 5]], 2, eos_id=0)
    assert blocks.dtype == torch.long
    assert blocks.tolist() == [[1, 2, 3], [3, 0, 4], [4, 5, 0]]
