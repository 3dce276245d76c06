"""tlcourse.features.neighbours: near-duplicate pairs and groups from embeddings (generated data)."""

from __future__ import annotations

import pytest
import torch

from tlcourse.features import duplicate_groups, keep_one_per_group, near_duplicates


def _embeddings() -> torch.Tensor:
    """Six random directions in 64 dims; rows 4 and 5 are near copies of 0, row 3 a scaled copy of 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, generator=g)
    x[3] = 3.0 * x[1]  # same direction: cosine 1
    x[4] = x[0] + 0.05 * torch.randn(64, generator=g)
    x[5] = x[0] + 0.05 * torch.randn(64, generator=g)
    return x


def test_within_a_set_each_pair_is_listed_once_most_similar_first():
    pairs = near_duplicates(_embeddings(), threshold=0.95, center=False)
    assert {(p.i, p.j) for p in pairs} == {(1, 3), (0, 4), (0, 5), (4, 5)}
    assert all(p.i < p.j for p in pairs)
    assert pairs[0].similarity == pytest.approx(1.0, abs=1e-5) and (pairs[0].i, pairs[0].j) == (1, 3)
    assert [p.similarity for p in pairs] == sorted((p.similarity for p in pairs), reverse=True)


def test_random_directions_are_not_near_duplicates():
    x = torch.randn(200, 256, generator=torch.Generator().manual_seed(1))
    assert near_duplicates(x, threshold=0.5) == []


def test_centring_removes_a_common_offset_that_makes_everything_look_alike():
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(2)) + 20.0  # all-positive, like ReLU features
    assert len(near_duplicates(x, threshold=0.9, center=False)) == 50 * 49 // 2
    x[7] = x[3] + 0.01
    assert [(p.i, p.j) for p in near_duplicates(x, threshold=0.9)] == [(3, 7)]


def test_across_two_sets_indices_refer_to_each_set():
    x = _embeddings()
    pairs = near_duplicates(x[[2, 4]], x[[0, 1, 2]], threshold=0.95, center=False)
    assert {(p.i, p.j) for p in pairs} == {(0, 2), (1, 0)}


def test_chunking_gives_the_same_pairs():
    x = _embeddings()
    chunked, whole = near_duplicates(x, threshold=0.95, center=False, chunk=2), near_duplicates(x, threshold=0.95, center=False)
    assert {(p.i, p.j) for p in chunked} == {(p.i, p.j) for p in whole}
    assert sorted(p.similarity for p in chunked) == pytest.approx(sorted(p.similarity for p in whole))


def test_groups_join_pairs_that_share_an_image_and_one_of_each_is_kept():
    pairs = near_duplicates(_embeddings(), threshold=0.95, center=False)
    assert duplicate_groups(pairs) == [[0, 4, 5], [1, 3]]
    keep = keep_one_per_group(6, pairs)
    assert keep == [0, 1, 2]
    assert near_duplicates(_embeddings()[keep], threshold=0.95, center=False) == []


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="between -1 and 1"):
        near_duplicates(torch.zeros(2, 3), threshold=1.5)
    with pytest.raises(ValueError, match="dimensions differ"):
        near_duplicates(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="outside"):
        keep_one_per_group(2, near_duplicates(_embeddings(), threshold=0.95, center=False))
