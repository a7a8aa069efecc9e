"""lowest_in_rows: the k lowest entries per row, ties to the earlier column, as a stable sort."""

import pytest
import torch

from prunekit.ranking import lowest_in_rows


def _reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores, dim=1, stable=True).indices
    out = torch.zeros_like(scores, dtype=torch.bool)
    out.scatter_(1, order[:, : max(0, min(k, scores.shape[1]))], True)
    return out


@pytest.mark.parametrize("k", [0, 1, 3, 7, 12, 20])
def test_matches_a_stable_sort_with_many_ties(k):
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 4, (9, 12), generator=g).float()  # every row full of ties
    got = lowest_in_rows(scores, k)
    assert torch.equal(got, _reference(scores, k))
    assert got.sum(1).tolist() == [min(max(k, 0), 12)] * 9


def test_infinities_and_distinct_values():
    scores = torch.tensor([[float("inf"), -1.0, float("-inf"), 2.0], [0.5, 0.5, float("inf"), -3.0]])
    assert torch.equal(lowest_in_rows(scores, 2), _reference(scores, 2))
    assert lowest_in_rows(scores, 2)[0].tolist() == [False, True, True, False]


def test_refuses_other_ranks():
    with pytest.raises(ValueError, match="2-D"):
        lowest_in_rows(torch.zeros(3), 1)
