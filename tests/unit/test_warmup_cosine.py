"""prunekit.callbacks.warmup_cosine: a linear warm-up then a cosine to 0, stepped by LRScheduler."""

from __future__ import annotations

import pytest
import torch

from prunekit.callbacks import LRScheduler, warmup_cosine
from prunekit.errors import PruneError


def test_the_rate_warms_up_linearly_then_follows_a_cosine_to_zero_and_resumes():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    cb = LRScheduler(warmup_cosine(opt, total=20, warmup=4))
    lrs = []
    for step in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cb.on_step_end(step, None, 0.0)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[12] == pytest.approx(0.5) and opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    again = LRScheduler(warmup_cosine(torch.optim.Adam([p], lr=1.0), total=20, warmup=4))
    again.load_state_dict(cb.state_dict())
    assert again.scheduler.last_epoch == 20


def test_no_warmup_starts_at_the_full_rate():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    warmup_cosine(opt, total=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs", [{"total": 0}, {"total": 10, "warmup": -1}, {"total": 2.5}])
def test_bad_step_counts_are_refused(kwargs):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(PruneError):
        warmup_cosine(opt, **kwargs)
    assert opt.param_groups[0]["lr"] == 0.1
