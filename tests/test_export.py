"""``gantrain-export``: ONNX files run in onnxruntime on the CPU and match PyTorch (gan, dcgan, stylegan; batch 1
and 7), the metadata, uint8 output equal to gantrain-generate's, a truncated torch.export .pt2, and bad input."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from gantrain import checkpoint, export, generate
from gantrain.models import sample
from gantrain.models.loading import load_generator
from tests.checkpoints import tiny_checkpoints

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'gantrain[export]'")
onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'gantrain[export]'")
pytest.importorskip("onnxscript", reason="onnxscript is not installed: pip install 'gantrain[export]'")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def onnx_files(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for model, ckpt in ckpts.items():
        out[model] = root / f"{model}.onnx"
        export.main([str(ckpt), "-o", str(out[model])])
    return out


def pytorch_generator(ckpt):
    G, _ = load_generator(checkpoint.load(ckpt), torch.device("cpu"))
    return G


def run_onnx(path, z: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"z": z.numpy()})[0]


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("model", ["gan", "dcgan", "stylegan"])
def test_onnxruntime_matches_pytorch(ckpts, onnx_files, model, batch):
    G = pytorch_generator(ckpts[model])
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = sample(G, z).numpy()
    got = run_onnx(onnx_files[model], z)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4
    assert expected.std() > 0


def test_onnx_file_is_checked_with_a_dynamic_batch_and_metadata(ckpts, onnx_files):
    proto = onnx.load(str(onnx_files["stylegan"]))
    onnx.checker.check_model(proto, full_check=True)
    (z,) = proto.graph.input
    assert z.name == "z" and z.type.tensor_type.shape.dim[0].dim_param       # a symbolic batch dimension
    assert [o.name for o in proto.graph.output] == ["images"]
    meta = {p.key: p.value for p in proto.metadata_props}
    ckpt = checkpoint.load(ckpts["stylegan"])
    assert meta["gantrain_version"] == export.version() != "unknown"
    assert json.loads(meta["gantrain_config"]) == ckpt["config"]
    assert meta["generator"] == "G_ema" and meta["step"] == str(ckpt["step"]) and meta["noise_mode"] == "const"
    gan = {p.key: p.value for p in onnx.load(str(onnx_files["gan"])).metadata_props}
    assert gan["generator"] == "G" and gan["output"].startswith("curves")


def test_uint8_onnx_reproduces_gantrain_generate(ckpts, tmp_path):
    """--uint8: NHWC uint8, the very images gantrain-generate writes for the same latents."""
    path = tmp_path / "G8.onnx"
    export.main([str(ckpts["dcgan"]), "-o", str(path), "--uint8"])
    generate.main([str(ckpts["dcgan"]), "-n", "7", "--seed", "5", "-o", str(tmp_path / "s.npz")])
    got = run_onnx(path, torch.randn(7, 100, generator=torch.Generator().manual_seed(5)))
    assert got.dtype == np.uint8 and got.shape == (7, 16, 16, 3)
    with np.load(tmp_path / "s.npz") as f:
        assert np.abs(got.astype(int) - f["images"].astype(int)).max() <= 1   # rounding at .5 only


def test_pt2_runs_with_torch_export_alone_truncated_with_metadata(ckpts, tmp_path):
    path = tmp_path / "G.pt2"
    export.main([str(ckpts["stylegan"]), "-o", str(path), "--truncation", "0.6"])
    extra = {export.PT2_META: ""}
    program = torch.export.load(str(path), extra_files=extra)
    meta = json.loads(extra[export.PT2_META])
    assert meta["generator"] == "G_ema" and meta["truncation_psi"] == "0.6"
    assert json.loads(meta["gantrain_config"])["model"]["name"] == "stylegan"
    G = pytorch_generator(ckpts["stylegan"])
    for batch in (1, 7):
        z = torch.randn(batch, G.z_dim)
        with torch.no_grad():
            got = program.module()(z)
            assert (got - sample(G, z, 0.6)).abs().max() <= 1e-5
            assert (got - sample(G, z)).abs().max() > 1e-3          # the truncation is in the file


def test_noise_none_leaves_the_noise_out(ckpts):
    G = pytorch_generator(ckpts["stylegan"])
    for block in G.blocks:                       # make the (2-step, near-zero) noise strengths visible
        block.conv1.noise.strength.data.fill_(0.5)
    z = torch.randn(2, G.z_dim)
    with torch.no_grad():
        none = export.Exported(G, 0.7, "none", False)(z)
        assert torch.equal(none, G.synthesis(G.mapping(z, 0.7), noise_mode="none"))
        assert (none - export.Exported(G, 0.7, "const", False)(z)).abs().max() > 1e-2


# -------------------------------------------------------------------------------------- bad input
def fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        export.main([str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gantrain-export: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_input_is_one_sentence(ckpts, onnx_files, tmp_path, capsys):
    assert "use .onnx" in fails(capsys, ckpts["dcgan"], "-o", tmp_path / "G.tflite")
    assert "not a gantrain checkpoint" in fails(capsys, onnx_files["gan"], "-o", tmp_path / "G.onnx")
    obj = torch.load(ckpts["dcgan"], weights_only=True)
    del obj["config"]["model"]["generator"]
    torch.save(obj, tmp_path / "no_generator.pt")
    assert "model.generator" in fails(capsys, tmp_path / "no_generator.pt", "-o", tmp_path / "G.onnx")
    assert "only to StyleGAN" in fails(capsys, ckpts["dcgan"], "-o", tmp_path / "G.onnx", "--truncation", "0.5")
    assert "1-D curves" in fails(capsys, ckpts["gan"], "-o", tmp_path / "G.onnx", "--uint8")
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_extra_names_it(ckpts, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    err = fails(capsys, ckpts["gan"], "-o", tmp_path / "G.onnx")
    assert "onnxscript" in err and "pip install 'gantrain[export]'" in err


@pytest.mark.parametrize("model", ["gan", "dcgan"])
def test_a_conditional_generator_exports_with_a_class_input(tmp_path, mnist_root, model):
    """model.conditional=true: the file takes (z, class) and matches G(z, c) in onnxruntime and as a .pt2."""
    from gantrain.training.loop import train
    from tests.utils import FAST, make_cfg, tiny

    run = tmp_path / "run"
    train(make_cfg(*FAST, *tiny(model), "model.conditional=true", "data=mnist", f"data.root={mnist_root}",
                   "data.batch_size=8", "log.num_samples=10", "trainer.max_steps=2"), run)
    ckpt = run / "checkpoints" / "last.pt"
    G = pytorch_generator(ckpt)
    z = torch.randn(7, G.z_dim, generator=torch.Generator().manual_seed(7))
    c = torch.tensor([0, 1, 2, 3, 7, 8, 9])
    with torch.no_grad():
        expected = sample(G, z, c=c).numpy()
        other = sample(G, z, c=(c + 1) % 10).numpy()
    export.main([str(ckpt), "-o", str(tmp_path / "G.onnx")])
    session = ort.InferenceSession(str(tmp_path / "G.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "class"]
    got = session.run(None, {"z": z.numpy(), "class": c.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(other - expected).max() > 1e-3  # the class input matters
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "G.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == [str(k) for k in range(10)] and "class int64" in meta["input"]
    export.main([str(ckpt), "-o", str(tmp_path / "G.pt2")])
    program = torch.export.load(str(tmp_path / "G.pt2")).module()
    assert torch.allclose(program(z, c), torch.from_numpy(expected), atol=1e-5)
