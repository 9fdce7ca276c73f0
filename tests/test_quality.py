"""The quality benchmark end to end on a tiny budget (the real script, its data formats and its table)."""

from __future__ import annotations

import numpy as np

from gantrain.quality import data as qdata
from gantrain.quality.__main__ import main


def test_quality_script_sine_case_writes_its_table(tmp_path, capsys):
    doc = tmp_path / "QUALITY.md"
    doc.write_text("# Quality\n\nkept text\n")
    main(["--cases", "sine", "--seeds", "0", "--steps", "3", "--data-root", str(tmp_path / "data"),
          "--json", str(tmp_path / "r.jsonl"), "--write", "--doc", str(doc), "--tag", "smoke"])
    text = doc.read_text()
    assert "kept text" in text and "<!-- quality:smoke:start -->" in text and "<!-- quality:smoke:end -->" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"real data (reference)", "gantrain", "textbook"} <= set(rows)
    ref = [float(c.split()[0]) for c in rows["real data (reference)"].split("|")[3:6]]
    assert all(0 <= v < 0.15 for v in ref)          # fresh curves of the family score near 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) >= 3
    # rewriting the section replaces it instead of appending a second one
    main(["--collect", str(tmp_path / "r.jsonl"), "--write", "--doc", str(doc), "--tag", "smoke"])
    assert doc.read_text().count("<!-- quality:smoke:start -->") == 1
    capsys.readouterr()


def test_digits_are_mnist_idx_read_by_the_loaders(tmp_path, monkeypatch):
    from torchvision import datasets

    from gantrain.data.mnist import load_mnist_like

    monkeypatch.setitem(qdata.DIGIT_SEEDS, "digits-tiny", 7)
    root = qdata.digits(tmp_path, "digits-tiny", 40, n_test=20)
    x, y = load_mnist_like({"root": str(root), "download": False}, "mnist", split="train")
    assert tuple(x.shape) == (40, 28, 28) and sorted(set(y.tolist())) == list(range(10))
    assert x.float().mean() > 10 and (x[:, 0].float().mean() < 5)   # white glyphs on black, centred
    tv = datasets.MNIST(str(root), train=False)
    assert len(tv) == 20
    again = qdata.render_digits(60, 7)[0]
    assert np.array_equal(again[:40], x.numpy())                      # the same draw from the seed


def test_mlp_generator_smooth_low_passes_curves_only():
    import torch

    from gantrain.models.conditional import MLPGenerator as CondG
    from gantrain.models.mlp import Generator

    torch.manual_seed(0)
    raw = Generator((64,), z_dim=4, hidden=[32])
    smooth = Generator((64,), z_dim=4, hidden=[32], smooth=2.0)
    smooth.load_state_dict(raw.state_dict())                 # the kernel is not a weight: same state dict
    z = torch.randn(16, 4)
    with torch.no_grad():
        a, b = raw(z), smooth(z)
    assert b.shape == a.shape == (16, 64)
    assert b.diff(dim=1).std() < 0.5 * a.diff(dim=1).std()    # point-to-point jumps damped
    assert (b.mean(1) - a.mean(1)).abs().max() < 0.05         # the level kept (reflect padding, unit sum)
    assert Generator((1, 8, 8), z_dim=4, hidden=[8], smooth=2.0).kernel is None
    assert CondG((64,), num_classes=3, z_dim=4, hidden=[8], smooth=2.0).kernel is not None
