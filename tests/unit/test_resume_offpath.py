"""Resume and save off the common path: pre-pruned models, refused resumes, damaged files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.callbacks import AccuracyFloor, LRScheduler, PruningCallback
from prunekit.errors import PruneError
from prunekit.schedules import Gradual, OneShot
from prunekit.train import CHECKPOINT_FILE, fit


class Crash(Exception):
    pass


class CrashAt:
    """Raises after step ``at`` (0-based), or at the end of epoch ``epoch_end``; None: never."""

    def __init__(self, at: int | None = None, epoch_end: int | None = None) -> None:
        self.at, self.epoch_end = at, epoch_end

    def on_step_end(self, step: int, model, loss: float) -> None:
        if step == self.at:
            raise Crash

    def on_epoch_end(self, epoch: int, model, logs) -> None:
        if epoch == self.epoch_end:
            raise Crash


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(96, 10, generator=g), torch.randint(0, 3, (96,), generator=g)


def _mlp(extra: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3), nn.BatchNorm1d(3) if extra else nn.Identity())


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- finding 1: a model pruned before fit, resumed into a freshly built one --------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_prepruned_run_resumes_into_fresh_model_like_uninterrupted(tmp_path, optimizer):
    x, y = _data()
    kw = dict(epochs=2, batch_size=16, seed=1, progress=False, optimizer=optimizer, checkpoint_every=2)
    ref = _mlp()
    pk.prune(ref, 0.7)
    ref_hist = fit(ref, (x, y), callbacks=[CrashAt()], **kw)
    first = _mlp()
    pk.prune(first, 0.7)
    with pytest.raises(Crash):
        fit(first, (x, y), callbacks=[CrashAt(8)], checkpoint_dir=tmp_path, **kw)
    fresh = _mlp()  # not pruned: its optimizer is built over [W0, b0, ...], the first run's over [b0, W0, ...]
    hist = fit(fresh, (x, y), callbacks=[CrashAt()], checkpoint_dir=tmp_path, **kw)
    _same_state(fresh, ref)
    assert pk.masks(fresh).keys() == pk.masks(ref).keys() != set()
    assert hist["loss"] == ref_hist["loss"] and hist["steps"] == ref_hist["steps"] == 12


def test_optimizer_over_other_parameters_is_refused_untouched(tmp_path):
    x, y = _data()
    fit(_mlp(), (x, y), epochs=1, batch_size=16, seed=1, progress=False, checkpoint_dir=tmp_path)
    model = _mlp()
    opt = torch.optim.Adam(model[0].parameters())
    before = _state(model)
    with pytest.raises(PruneError, match=r"last\.pt holds an optimizer over other parameters.*2\.weight"):
        fit(model, (x, y), epochs=2, batch_size=16, optimizer=opt, seed=1, progress=False, checkpoint_dir=tmp_path)
    _same_state_dict(model, before)
    assert not opt.state


def _same_state_dict(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


# --- findings 5 and 6: a refused resume changes nothing; callbacks matched by class ------------------


def _pruned_checkpoint(folder) -> None:
    x, y = _data()
    fit(_mlp(), (x, y), epochs=1, batch_size=16, seed=1, progress=False,
        callbacks=[PruningCallback(OneShot(0.5, step=2))], checkpoint_dir=folder)


def test_resume_refused_for_callbacks_leaves_model_and_optimizer_untouched(tmp_path):
    _pruned_checkpoint(tmp_path)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = _state(model)
    with pytest.raises(PruneError, match=r"last\.pt was written with 1 callbacks \[PruningCallback\], fit got 0"):
        fit(model, _data(), epochs=2, batch_size=16, optimizer=opt, seed=1, progress=False, checkpoint_dir=tmp_path)
    _same_state_dict(model, before)
    assert pk.masks(model) == {} and not opt.state


def test_resume_refused_for_other_model_names_file_and_keys(tmp_path):
    _pruned_checkpoint(tmp_path)
    model = _mlp(extra=True)
    before = _state(model)
    with pytest.raises(PruneError, match=r"last\.pt does not fit the model \(missing from the checkpoint: 3\.bias"):
        fit(model, _data(), epochs=2, batch_size=16, seed=1, progress=False,
            callbacks=[PruningCallback(OneShot(0.5, step=2))], checkpoint_dir=tmp_path)
    _same_state_dict(model, before)
    assert pk.masks(model) == {}


def test_resume_refused_for_other_shapes(tmp_path):
    _pruned_checkpoint(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 3), nn.Identity())
    with pytest.raises(PruneError, match=r"other shapes \(checkpoint vs model\): 0\.bias \(16,\) vs \(12,\)"):
        fit(model, _data(), epochs=2, batch_size=16, seed=1, progress=False,
            callbacks=[PruningCallback(OneShot(0.5, step=2))], checkpoint_dir=tmp_path)
    assert pk.masks(model) == {}


def test_callbacks_in_another_order_are_refused_before_anything_is_loaded(tmp_path):
    x, y = _data()

    def setup(swapped: bool):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lrs = LRScheduler(torch.optim.lr_scheduler.StepLR(opt, 3, 0.5))
        pc = PruningCallback(Gradual(0.8, begin=0, end=8, frequency=2))
        return model, opt, lrs, ([lrs, pc] if swapped else [pc, lrs])

    model, opt, _, cbs = setup(False)
    fit(model, (x, y), epochs=1, batch_size=16, optimizer=opt, seed=1, progress=False, callbacks=cbs,
        checkpoint_dir=tmp_path)
    model, opt, lrs, cbs = setup(True)
    before, sched = _state(model), dict(lrs.scheduler.__dict__)
    with pytest.raises(PruneError) as info:
        fit(model, (x, y), epochs=2, batch_size=16, optimizer=opt, seed=1, progress=False, callbacks=cbs,
            checkpoint_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / CHECKPOINT_FILE) in msg
    assert "[PruningCallback, LRScheduler], fit got 2 [LRScheduler, PruningCallback]" in msg
    assert "resume=False" in msg
    assert lrs.scheduler.__dict__.keys() == sched.keys() and lrs.scheduler.last_epoch == sched["last_epoch"]
    _same_state_dict(model, before)
    assert pk.masks(model) == {} and not opt.state


# --- finding 9: a damaged last.pt -------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["half", "empty"])
def test_damaged_checkpoint_is_named_with_the_way_out(tmp_path, cut):
    x, y = _data()
    fit(_mlp(), (x, y), epochs=1, batch_size=16, seed=1, progress=False, checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if cut == "half" else b"")
    model = _mlp()
    before = _state(model)
    with pytest.raises(PruneError, match=r"last\.pt cannot be read .*truncated or corrupt.*resume=False"):
        fit(model, (x, y), epochs=2, batch_size=16, seed=1, progress=False, checkpoint_dir=tmp_path)
    _same_state_dict(model, before)
    hist = fit(model, (x, y), epochs=1, batch_size=16, seed=1, progress=False, checkpoint_dir=tmp_path,
               resume=False)
    assert hist["steps"] == 6


# --- finding 8: saving a DDP / DataParallel wrapper ------------------------------------------------


def _check_wrapper_saved_as_module(wrapper: nn.Module, inner: nn.Module, folder) -> None:
    pk.save(wrapper, folder)
    import json

    spec = json.loads((folder / "spec.json").read_text())
    assert spec["zoo"] is not None and spec["class"].endswith(".LeNet300100")
    assert not any(k.startswith("module.") for k in spec["shapes"])
    back = pk.load(folder, masks=True)
    assert pk.masks(back).keys() == pk.masks(inner).keys() != set()
    x = torch.randn(4, 64)
    inner.eval(), back.eval()
    assert torch.equal(back(x), inner(x))


def test_save_of_a_dataparallel_wrapper_saves_the_module(tmp_path):
    from prunekit import zoo

    inner = zoo.create("lenet300100", in_features=64)
    pk.prune(inner, 0.5)
    _check_wrapper_saved_as_module(nn.DataParallel(inner), inner, tmp_path / "saved")


def test_save_of_a_ddp_wrapper_saves_the_module(tmp_path):
    import torch.distributed as dist

    from prunekit import zoo

    inner = zoo.create("lenet300100", in_features=64)
    pk.prune(inner, 0.5)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        _check_wrapper_saved_as_module(nn.parallel.DistributedDataParallel(inner), inner, tmp_path / "saved")
    finally:
        dist.destroy_process_group()


# --- finding 3: an early stop written mid-epoch, then the process died --------------------------------


def test_resume_of_an_early_stop_from_a_mid_epoch_checkpoint_closes_the_epoch(tmp_path):
    x, y = _data()
    g = torch.Generator().manual_seed(1)
    val = (torch.randn(48, 10, generator=g), torch.randint(0, 3, (48,), generator=g))

    def run(folder, die):
        model = _mlp()
        floor = AccuracyFloor(val, floor=0.99, every=3)
        hist = fit(model, (x, y), epochs=3, batch_size=16, seed=1, progress=False,
                   callbacks=[floor, CrashAt(epoch_end=0 if die else None)], checkpoint_dir=folder, checkpoint_every=3)
        return model, floor, hist

    ref, ref_floor, ref_hist = run(None, False)
    assert ref_hist["stopped"] and ref_hist["steps"] == 3 and ref_floor.stopped_epoch == 0
    with pytest.raises(Crash):
        run(tmp_path, True)  # the step-3 checkpoint holds the stop; the epoch-end one was never written
    model, floor, hist = run(tmp_path, False)
    assert {k: hist[k] for k in ("loss", "epochs", "steps", "stopped")} == {
        k: ref_hist[k] for k in ("loss", "epochs", "steps", "stopped")}
    assert floor.stopped_epoch == ref_floor.stopped_epoch == 0 and floor.history == ref_floor.history
    _same_state(model, ref)
    # The epoch is now closed in the checkpoint: one more resume returns the same history at once.
    _, _, again = run(tmp_path, False)
    assert again["loss"] == ref_hist["loss"] and again["steps"] == 3


# --- finding 10: temp files left by killed checkpoint writes ------------------------------------------


def test_next_checkpoint_write_removes_stale_temp_files_only(tmp_path):
    stale = [".last.pt.a07dthj7.tmp", ".last.pt.bx_k991y.tmp"]
    kept = [".last.pt.short.tmp", ".best.pt.a07dthj7.tmp", "last.pt.a07dthj7.tmp", ".last.pt.a07dthj7.tmp.bak",
            "notes.txt"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x" * 100)
    x, y = _data()
    fit(_mlp(), (x, y), epochs=1, batch_size=16, seed=1, progress=False, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [CHECKPOINT_FILE])
