import hashlib
import json
import os

import pytest
import safetensors.torch
import torch
from torch import nn

import prunekit.export as export
from prunekit.errors import PruneError, PruneTypeError
from prunekit.export import load, save
from prunekit.masking import apply_masks, get_masks, is_pruned


class Net(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _masked_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.sign(p) * 0.01 + (p == 0) * 0.01)  # no accidental zeros
    mask = (torch.rand(8, 6) > 0.5).float()
    apply_masks(model, {"fc1.weight": mask})
    return model.eval()


def test_round_trip_masked_model_gives_identical_outputs(tmp_path):
    model = _masked_net()
    x = torch.randn(5, 6)
    out = save(model, tmp_path / "m", metadata={"accuracy": 0.9})
    assert out == tmp_path / "m"
    assert is_pruned(model)  # saving does not commit the caller's model
    loaded = load(out, model=Net()).eval()
    assert not is_pruned(loaded)
    assert torch.equal(loaded(x), model(x))


def test_files_are_safetensors_and_json_no_pickle(tmp_path):
    model = _masked_net()
    folder = save(model, tmp_path / "m", metadata={"run": "a"})
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "spec.json"]
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    assert "fc1.weight" in tensors and not any("parametrizations" in k for k in tensors)
    assert torch.equal(tensors["fc1.weight"], model.fc1.weight)
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["format"] == "prunekit" and spec["version"] == 1
    assert spec["zoo"] is None
    assert spec["class"].endswith("test_export.Net")
    assert spec["masked"] == ["fc1.weight"]
    assert spec["shapes"]["fc1.weight"] == [8, 6]
    zeros = int((model.fc1.weight == 0).sum()) / 48
    assert spec["sparsity"]["fc1.weight"] == pytest.approx(zeros)
    assert spec["metadata"] == {"run": "a"}
    assert spec["sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_zoo_model_rebuilds_itself(tmp_path):
    from prunekit import zoo

    model = zoo.create("lenet5").eval()
    w = model.state_dict()
    name = next(k for k in w if k.endswith("weight") and w[k].dim() > 1)
    apply_masks(model, {name: (torch.rand_like(w[name]) > 0.5).float()})
    folder = save(model, tmp_path / "z")
    assert json.loads((folder / "spec.json").read_text())["zoo"] == model.zoo_spec
    loaded = load(folder).eval()
    assert type(loaded) is type(model)
    assert not is_pruned(loaded)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    a, b = _masked_net(0), _masked_net(1)
    x = torch.randn(4, 6)
    save(a, tmp_path / "m")
    real = export._write_bytes

    def failing(path, data):
        if path.name == "spec.json":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(export, "_write_bytes", failing)
    with pytest.raises(OSError, match="disk full"):
        save(b, tmp_path / "m")
    monkeypatch.setattr(export, "_write_bytes", real)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folders left behind
    assert torch.equal(load(tmp_path / "m", model=Net()).eval()(x), a(x))
    save(b, tmp_path / "m")
    assert torch.equal(load(tmp_path / "m", model=Net()).eval()(x), b(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_refuses_to_replace_foreign_folder(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(PruneError, match="not a prunekit save"):
        save(_masked_net(), tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"


def test_corrupted_weights_fail_checksum(tmp_path):
    folder = save(_masked_net(), tmp_path / "m")
    file = folder / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-10:] = bytes(b ^ 0xFF for b in data[-10:])
    file.write_bytes(bytes(data))
    with pytest.raises(PruneError, match="checksum") as info:
        load(folder, model=Net())
    assert str(file) in str(info.value)


def test_mismatched_model_names_the_key(tmp_path):
    folder = save(_masked_net(), tmp_path / "m")
    target = Net(hidden=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(PruneError, match=r"fc1\.weight \(saved \(8, 6\), model \(5, 6\)\)"):
        load(folder, model=target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_masks_true_restores_the_same_zeros(tmp_path):
    model = _masked_net()
    folder = save(model, tmp_path / "m")
    loaded = load(folder, model=Net(), masks=True)
    assert set(get_masks(loaded)) == {"fc1.weight"}
    assert torch.equal(get_masks(loaded)["fc1.weight"], get_masks(model)["fc1.weight"])
    assert torch.equal(loaded.fc1.weight == 0, model.fc1.weight == 0)


def test_unreadable_saves_raise_clear_errors(tmp_path):
    with pytest.raises(PruneError, match="does not exist"):
        load(tmp_path / "nothing", model=Net())
    folder = save(_masked_net(), tmp_path / "m")
    spec_file = folder / "spec.json"
    good = spec_file.read_text()
    spec_file.write_text("{not json")
    with pytest.raises(PruneError, match="not valid JSON"):
        load(folder, model=Net())
    spec = json.loads(good)
    spec_file.write_text(json.dumps({**spec, "format": "other"}))
    with pytest.raises(PruneError, match="unknown format"):
        load(folder, model=Net())
    spec_file.write_text(json.dumps({**spec, "version": 2}))
    with pytest.raises(PruneError, match="unsupported version 2"):
        load(folder, model=Net())
    spec_file.write_text(json.dumps({k: v for k, v in spec.items() if k != "architecture"}))
    with pytest.raises(PruneError, match="not a prunekit zoo model.*pass model="):
        load(folder)  # neither zoo nor architecture graph: the class is needed
    spec_file.write_text(good)
    (folder / "model.safetensors").unlink()
    with pytest.raises(PruneError, match="model.safetensors is missing"):
        load(folder, model=Net())


def test_bad_arguments(tmp_path):
    model = _masked_net()
    with pytest.raises(PruneTypeError):
        save("model", tmp_path / "m")
    with pytest.raises(PruneTypeError, match="JSON"):
        save(model, tmp_path / "m", metadata={"f": object()})
    assert not (tmp_path / "m").exists()
    folder = save(model, tmp_path / "m")
    with pytest.raises(PruneError, match="without masks"):
        load(folder, model=_masked_net())
    with pytest.raises(PruneTypeError):
        load(folder, model=Net(), masks="yes")


def test_tied_weights_save(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight  # safetensors refuses shared storage unless copied
    folder = save(model, tmp_path / "t")
    fresh = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    load(folder, model=fresh)
    assert torch.equal(fresh[1].weight, model[0].weight)


@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_saved_folder_and_files_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    old = os.umask(umask)
    try:
        folder = save(_masked_net(), tmp_path / "m")
        save(_masked_net(), folder)  # a replaced save too
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == folder_mode
    assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {file_mode}


def test_save_records_the_inputs_it_is_given(tmp_path):
    import json as _json

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    save(net, tmp_path / "one", example_inputs=torch.zeros(5, 1, 8, 8), metadata={"note": "x"})
    meta = _json.loads((tmp_path / "one" / "spec.json").read_text())["metadata"]
    assert meta == {"note": "x", "input_shape": [1, 1, 8, 8], "input_dtype": "torch.float32"}
    with pytest.raises(TypeError, match="example_inputs"):
        save(net, tmp_path / "bad", example_inputs="1,1,8,8")
    assert not (tmp_path / "bad").exists()


def test_load_without_the_class_keeps_tied_weights_one_tensor(tmp_path):
    import prunekit as pk
    from conftest import TiedLM

    torch.manual_seed(0)
    model = TiedLM()
    pk.prune(model, 0.5)
    x = torch.randint(0, 50, (3, 5))
    folder = save(model, tmp_path / "tied", example_inputs=x)
    back = load(folder)
    assert back.emb.weight is back.head.weight  # fine-tuning moves both names together, as before saving
    assert pk.measure(back, x, latency=False).params == pk.measure(model, x, latency=False).params == 50 * 16 + 16 * 16 + 16
    assert pk.sparsity(back) == pk.sparsity(model)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_state_the_forward_never_reads_is_saved_and_reloaded(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.aux_head = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 3)
            self.register_buffer("class_counts", torch.tensor([3.0, 1.0, 2.0]))

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Net()
    back = load(save(model, tmp_path / "n"))
    ref = model.state_dict()
    assert back.state_dict().keys() == ref.keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ref.items())
    assert dict(back.named_buffers()).keys() == {"class_counts"}


def test_a_forward_that_branches_on_training_is_not_baked_into_one_graph(tmp_path):
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * 2 if self.training else self.fc(x)

    torch.manual_seed(0)
    model = Noisy().train()  # saved in train mode: the eval graph is the one users deploy
    folder = save(model, tmp_path / "n")
    spec = json.loads((folder / "spec.json").read_text())
    assert "architecture" not in spec and "train and eval mode" in spec["architecture_note"]
    with pytest.raises(PruneError, match="train and eval mode"):
        load(folder)
    fresh = load(folder, model=Noisy()).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), model.eval()(x))
