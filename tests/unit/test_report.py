"""The HTML/Markdown pruning report: self-contained, real plots, atomic writes."""

from __future__ import annotations

import base64
import copy
import io
import os
import sys
import warnings
from html.parser import HTMLParser

import pytest
import torch

pytest.importorskip("matplotlib")

from conftest import MLP  # noqa: E402
from matplotlib.image import imread  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit import train  # noqa: E402
from prunekit.report import write_report  # noqa: E402
from prunekit.report.plots import pareto_front  # noqa: E402
from prunekit.sensitivity import sensitivity  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    """Collects what the tests look at: sections, headings, images, every attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = dict(attrs)
        self.attrs += [(k, v or "") for k, v in attrs]
        if tag == "section":
            self.sections.append(d["id"])
        if tag == "img":
            self.images.append(d["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def parts(digits_batches):
    torch.manual_seed(0)
    dense = MLP()
    x = digits_batches[0][0]
    ev = lambda m: train.evaluate(m, digits_batches)  # noqa: E731
    sens = sensitivity(dense, ev, sparsities=(0.5, 0.9))
    model = copy.deepcopy(dense)
    result = pk.prune(model, 0.8, allocation="lamp")
    rows = []
    for method in ("uniform", "global"):
        for sp in (0.5, 0.9):
            m = copy.deepcopy(dense)
            pk.prune(m, sp, allocation=method)
            rows.append({"method": method, "sparsity": sp, "accuracy": ev(m), "nonzero_params": round(5018 * (1 - sp))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scattered-zeros speed note
        before, after = pk.measure(dense, x, latency=False), pk.measure(model, x, latency=False)
    return dict(before=before, after=after, result=result, sensitivity=sens, tradeoff=rows,
                before_acc=ev(dense), after_acc=ev(model))


@pytest.fixture(scope="module")
def full(parts, tmp_path_factory):
    path = write_report(tmp_path_factory.mktemp("full") / "report.html", title="Digits <MLP> & co", **parts)
    return path, path.read_text(encoding="utf-8"), path.with_suffix(".md").read_text(encoding="utf-8")


def _decode_png(src: str):
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    raw = base64.b64decode(src[len(prefix):], validate=True)
    assert raw.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(raw), format="png")


def test_html_has_every_section_and_one_real_png_per_plot(full):
    path, text, _ = full
    page = _parse(text)
    assert page.sections == ["summary", "cost", "layers", "energy", "sensitivity", "tradeoff", "pareto", "settings"]
    assert page.headings == ["Before and after", "Trade-off: accuracy against size and compute", "Sparsity per layer",
                             "Energy estimate", "Sensitivity analysis", "Accuracy–sparsity trade-off",
                             "Pareto front: accuracy against size", "Settings and machine"]
    # One plot per section except the table-only summary, settings and energy (before and
    # after differ by under 10 %: a table says it better).
    assert len(page.images) == 5
    for src in page.images:
        pixels = _decode_png(src)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 500
        assert float(pixels[..., :3].var()) > 0.001  # not a blank canvas


def test_html_is_self_contained(full):
    _, text, _ = full
    page = _parse(text)
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    for key, value in page.attrs:  # the only references are in-page anchors and embedded images
        if key in ("src", "href"):
            assert value.startswith(("data:image/png;base64,", "#")), (key, value[:40])
    assert "<title>Digits &lt;MLP&gt; &amp; co</title>" in text  # user text is escaped


def test_html_tables_hold_the_numbers(full, parts):
    _, text, _ = full
    res = parts["result"]
    for layer in res.layers:
        assert f"<td>{layer.name}</td>" in text and f"<td>{layer.sparsity:.2%}</td>" in text
    assert f"<td>{parts['before_acc']:.2%}</td>" in text and f"<td>{parts['after_acc']:.2%}</td>" in text
    assert f"{parts['after'].energy_uj:.4g}" in text


def test_markdown_has_the_before_after_table(full, parts):
    _, _, md = full
    before, after = parts["before"], parts["after"]
    assert md.startswith("# Digits <MLP> & co\n")
    assert "| metric | before | after | ratio |" in md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["nonzero params"] == f"| nonzero params | {before.nonzero_params / 1e3:.2f}k | " \
        f"{after.nonzero_params / 1e3:.2f}k | {before.nonzero_params / after.nonzero_params:.1f}× |"
    assert rows["accuracy"].startswith(f"| accuracy | {parts['before_acc']:.2%} | {parts['after_acc']:.2%} |")
    for heading in ("## Energy estimate", "## Sparsity per layer", "## Sensitivity analysis", "## Pareto front",
                    "## Trade-off: accuracy against size and compute", "## Settings and machine"):
        assert heading in md
    assert "data:image" not in md


def test_pareto_front_keeps_only_unbeaten_points():
    pts = [(10, 0.9), (5, 0.8), (5, 0.85), (20, 0.88), (3, 0.5), (10, 0.9)]
    assert pareto_front(pts) == [(3, 0.5), (5, 0.85), (10, 0.9)]


def test_minimal_report_and_no_pareto_without_sizes(parts, tmp_path):
    path = write_report(tmp_path / "out" / "r.html", before=parts["before"], after=parts["after"])
    page = _parse(path.read_text(encoding="utf-8"))
    assert page.sections == ["summary", "energy", "settings"] and page.images == []
    assert (tmp_path / "out" / "r.md").exists()
    if os.name == "posix":  # the mode a plain open() gives, not a temp file's private one
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    rows = [{k: v for k, v in r.items() if k != "nonzero_params"} for r in parts["tradeoff"]]
    path = write_report(tmp_path / "t.html", before=parts["before"], after=parts["after"], tradeoff=rows)
    assert _parse(path.read_text(encoding="utf-8")).sections == ["summary", "energy", "tradeoff", "settings"]


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(tradeoff=[{"method": "lamp", "sparsity": 0.5, "accuracy": "high"}]), r"tradeoff\[0\]\['accuracy'\]='high'"),
        (dict(tradeoff=[{"method": "lamp", "sparsity": 1.5, "accuracy": 0.9}]), r"\['sparsity'\]=1\.5 is not a number in \[0, 1\]"),
        (dict(tradeoff=[{"method": "lamp", "accuracy": 0.9}]), r"tradeoff\[0\] lacks \['sparsity'\]"),
        (dict(tradeoff=[{"method": "x", "sparsity": 0.5, "accuracy": 0.9, "size_bytes": -3}]), r"\['size_bytes'\]=-3"),
        (dict(before="dense"), "before must be a Metrics .* got str"),
        (dict(result={"layers": []}), "result must be a PruneResult .* got dict"),
        (dict(sensitivity=[]), "sensitivity must be a SensitivityReport .* got list"),
        (dict(after_acc=float("nan")), "after_acc=nan must be a finite number"),
    ],
)
def test_bad_arguments_leave_existing_files_alone(parts, tmp_path, change, match):
    path = tmp_path / "report.html"
    path.write_text("old report", encoding="utf-8")
    with pytest.raises(pk.PruneError, match=match):
        write_report(path, **{**parts, **change})
    assert path.read_text(encoding="utf-8") == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no .md, no temp files


def test_bad_paths(parts, tmp_path):
    with pytest.raises(pk.PruneError, match=r"path='.*report\.md' must end in \.html or \.htm"):
        write_report(tmp_path / "report.md", before=parts["before"], after=parts["after"])
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(pk.PruneError, match="is a folder"):
        write_report(tmp_path / "dir.html", before=parts["before"], after=parts["after"])
    with pytest.raises(pk.PruneTypeError, match="path must be a str or os.PathLike, got int"):
        write_report(3, before=parts["before"], after=parts["after"])


def test_missing_matplotlib_names_the_extra(parts, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    with pytest.raises(pk.PruneError, match=r"pip install prunekit\[plot\]"):
        write_report(tmp_path / "report.html", before=parts["before"], after=parts["after"], result=parts["result"])
    assert list(tmp_path.iterdir()) == []
