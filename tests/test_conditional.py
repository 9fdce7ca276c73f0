"""Class-conditional GANs (model.conditional=true): labels drawn with their batches, the conditional
networks, training and exact resume, refusals, and that a class really steers what G makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gantrain import checkpoint
from gantrain.data import build_dataset
from gantrain.errors import UserError
from gantrain.models import conditional
from tests.conftest import MNIST_TRAIN, write_idx
from tests.utils import make_cfg, tiny

from .test_checkpoint import _restore_determinism, run  # noqa: F401 (autouse fixture, the tiny-run helper)

COND = ["model.conditional=true"]




def mnist(root) -> list[str]:
    return ["data=mnist", f"data.root={root}"]


def labelled_folder(tmp_path: Path, per_class: int = 6) -> Path:
    """An ImageFolder: root/bright/*.png (white) and root/dark/*.png (black), greyscale 16x16."""
    from PIL import Image

    root = tmp_path / "classes"
    for name, value in (("bright", 255), ("dark", 0)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((16, 16), value, dtype=np.uint8), "L").save(root / name / f"{i}.png")
    return root


# ----------------------------------------------------------------------------------------- data
def test_labels_are_drawn_with_their_batches_in_every_shard_and_mirror(mnist_root):
    """The fixture's label of example i is i % 10; with xflip example i + N is example i mirrored."""
    cfg = make_cfg("data=mnist", f"data.root={mnist_root}", "data.xflip=true").data
    for rank in (0, 1):
        ds = build_dataset(cfg, device=torch.device("cpu"), seed=3, rank=rank, world_size=2, labels=True)
        assert ds.class_names == [str(k) for k in range(10)]
        for step in (0, 5, 17):   # past an epoch: the next permutation
            idx = ds.indices(step, 8)
            assert torch.equal(ds.batch_labels(step, 8), (idx % MNIST_TRAIN) % 10)
        assert torch.equal(ds.real_labels(5), (ds._fixed_indices(5) % MNIST_TRAIN) % 10)
    plain = build_dataset(cfg, device=torch.device("cpu"), seed=3)
    assert plain.labels is None and plain.class_names is None


def test_folder_classes_are_its_subfolders(tmp_path):
    root = labelled_folder(tmp_path)
    cfg = make_cfg("data=folder", f"data.root={root}", "data.resolution=16", "data.channels=1").data
    ds = build_dataset(cfg, device=torch.device("cpu"), labels=True)
    assert ds.class_names == ["bright", "dark"]
    for step in range(3):      # white images are class 0, black ones class 1
        x, c = ds.batch(step, 4), ds.batch_labels(step, 4)
        assert torch.equal(c, (x.mean(dim=(1, 2, 3)) < 0).long())


def test_unlabelled_data_is_refused_in_one_sentence(tmp_path, image_folder, celeba_root):
    def build(*o):
        return build_dataset(make_cfg(*o).data, device=torch.device("cpu"), labels=True)

    with pytest.raises(UserError, match="images outside class subfolders.*one subfolder per class"):
        build("data=folder", f"data.root={image_folder}", "data.resolution=16")
    with pytest.raises(UserError, match="data=celeba has none.*one subfolder per class"):
        build("data=celeba", f"data.root={celeba_root}")
    with pytest.raises(UserError, match="data=sine has no classes"):
        build("data=sine")
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8)).save(one / "only" / "a.png")
    with pytest.raises(UserError, match="at least two classes"):
        build("data=folder", f"data.root={one}", "data.resolution=8")


# --------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("model", ["gan", "dcgan", "stylegan"])
def test_conditional_networks_use_the_class(model):
    cfg = make_cfg(*tiny(model), *COND, "data=mnist")  # a data set with classes (sine packs its D)
    shape = (1, 32, 32)
    G = conditional.CONDITIONAL[cfg.model.generator._target_]
    nodes = {w: conditional.conditional_node(cfg.model[w], 3) for w in ("generator", "discriminator")}
    from hydra.utils import instantiate

    G, D = (instantiate(nodes[w], shape=shape).eval() for w in ("generator", "discriminator"))
    z = torch.randn(4, G.z_dim)
    with torch.no_grad():
        a, b = G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.full((4,), 2))
        assert a.shape == b.shape == (4, *shape)
        assert not torch.allclose(a, b), "G ignores its class"
        assert torch.equal(G(z), G(z, torch.tensor([0, 1, 2, 0])))     # None: the balanced classes
        x = torch.randn(4, *shape)
        with torch.no_grad():
            D.embed.weight.normal_() if hasattr(D.embed, "weight") else None
        da, db = D(x, torch.zeros(4, dtype=torch.long)), D(x, torch.ones(4, dtype=torch.long))
        assert da.shape == (4,) and not torch.allclose(da, db), "D ignores the class"


def test_dcgan_conditional_batchnorm_alone_uses_the_class():
    G = conditional.DCGANGenerator((1, 16, 16), 3, z_dim=8, base_channels=8, embed_dim=0).eval()
    assert not hasattr(G, "embed") and sum(isinstance(m, conditional.ConditionalBatchNorm2d) for m in G.net) == 2
    with torch.no_grad():
        G.net[1].bias.weight[2] += 1.0      # class 2's BatchNorm bias
        z = torch.randn(4, 8)
        assert not torch.allclose(G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.full((4,), 2)))


@pytest.mark.parametrize("model,extra", [
    ("gan", []),
    ("dcgan", ["augment=diffaug"]),
    ("dcgan", ["loss=wgan_gp", "optim=wgan_gp", "model.discriminator.batch_norm=false", "trainer.d_steps=2"]),
    ("stylegan", ["loss.r1_interval=2", "trainer.accumulate=2"]),
])
def test_each_model_trains_conditionally(tmp_path, mnist_root, model, extra):
    run(tmp_path / "run", *tiny(model), *COND, *mnist(mnist_root), "trainer.max_steps=3", "log.every_n_steps=1",
        "log.sample_every_n_steps=3", "log.num_samples=20", *extra)
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["class_names"] == [str(k) for k in range(10)]
    assert any(k.startswith("embed") or ".gain." in k for k in ckpt["G"]), "no class embedding in G"
    assert "embed.weight" in ckpt["D"] or "embed.parametrizations.weight.original" in ckpt["D"]
    if model == "gan":  # the grid: one row per class (a name tile + 20 // 10 = 2 samples), padding 2
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0}).Reload()
        image = acc.Images("samples")[-1]
        assert (image.width, image.height) == (2 + 3 * 30, 2 + 10 * 30)


def test_cdcgan_preset_is_conditional():
    cfg = make_cfg("experiment=cdcgan_mnist")
    assert cfg.model.name == "dcgan" and cfg.model.conditional is True and cfg.data.name == "mnist"


def test_conditional_resume_is_bit_exact(tmp_path, mnist_root):
    common = [*tiny("dcgan"), *COND, *mnist(mnist_root), "trainer.deterministic=true", "log.every_n_steps=2",
              "log.sample_every_n_steps=2", "ckpt.every_n_steps=100", "log.num_samples=10"]
    one_go, two_part = tmp_path / "one_go", tmp_path / "two_part"
    run(one_go, *common, "trainer.max_steps=6")
    run(two_part, *common, "trainer.max_steps=3")
    run(two_part, *common, "trainer.max_steps=6", "resume=auto")
    a, b = (checkpoint.load(p / "checkpoints" / "last.pt") for p in (one_go, two_part))
    for key in ("G", "D"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"


def test_conditional_needs_a_model_with_a_conditional_version(tmp_path, mnist_root):
    with pytest.raises(UserError, match="model.conditional=true: model.generator .* no class-conditional"):
        run(tmp_path / "run", *tiny("gan"), *COND, *mnist(mnist_root), "model.generator._target_=torch.nn.Linear",
            "trainer.max_steps=1")


# ----------------------------------------------------------------------------- it really conditions
def two_class_mnist(root: Path, n: int = 64) -> Path:
    """MNIST IDX files: class 0 all black, class 1 all white (labels 0/1 alternating)."""
    labels = np.arange(n) % 2
    x = np.where(labels[:, None, None] == 1, 255, 0).astype(np.uint8) * np.ones((1, 28, 28), np.uint8)
    raw = root / "MNIST" / "raw"
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


def test_a_class_steers_what_is_generated(tmp_path):
    """Trained briefly on black (0) and white (1) images, G makes for class 0 images nearer the black reals
    than the white ones, and for class 1 the reverse."""
    from gantrain.models.loading import load_generator

    root = two_class_mnist(tmp_path / "data")
    run(tmp_path / "run", *tiny("gan"), *COND, *mnist(root), "trainer.max_steps=100", "model.ema_kimg=null",
        "optim.generator.lr=0.002", "optim.discriminator.lr=0.002")
    G, _ = load_generator(checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt"), torch.device("cpu"))
    z = torch.randn(32, G.z_dim, generator=torch.Generator().manual_seed(0))
    black, white = torch.full((1, 28, 28), -1.0), torch.full((1, 28, 28), 1.0)
    for k, own, other in ((0, black, white), (1, white, black)):
        x = G(z, torch.full((32,), k))
        d_own, d_other = (x - own).square().mean(), (x - other).square().mean()
        assert d_own < d_other / 2, f"class {k}: distance to its reals {d_own:.3f}, to the other's {d_other:.3f}"


# ------------------------------------------------------------------------------------- generate --class
@pytest.fixture
def cond_ckpt(tmp_path, mnist_root) -> Path:
    run(tmp_path / "cond", *tiny("gan"), *COND, *mnist(mnist_root), "trainer.max_steps=1")
    return tmp_path / "cond" / "checkpoints" / "last.pt"


def generate(*argv: str) -> str:
    from gantrain.generate import generate as run_generate
    from gantrain.generate import parse_args

    return run_generate(parse_args([*argv, "--device", "cpu", "--seed", "1"]))


def test_generate_a_class_and_all_classes(tmp_path, cond_ckpt):
    from PIL import Image

    generate(str(cond_ckpt), "--class", "7", "-n", "5", "-o", str(tmp_path / "seven.npz"))
    with np.load(tmp_path / "seven.npz") as f:
        assert f["images"].shape == (5, 28, 28, 1) and f["labels"].tolist() == [7] * 5
    generate(str(cond_ckpt), "--class", "all", "-n", "3", "-o", str(tmp_path / "all.npz"))
    with np.load(tmp_path / "all.npz") as f:
        assert f["labels"].tolist() == [k for k in range(10) for _ in range(3)]
        images = f["images"]
        assert images.shape[0] == 30
        assert not np.array_equal(images[3:6], images[0:3]), "class 1's row repeats class 0's"
    generate(str(cond_ckpt), "--class", "all", "-n", "3", "-o", str(tmp_path / "all.png"))
    assert Image.open(tmp_path / "all.png").size == (2 + 3 * 30, 2 + 10 * 30)     # 10 rows of 3 (padding 2)
    generate(str(cond_ckpt), "-n", "4", "-o", str(tmp_path / "plain.npz"))   # no --class: classes in turn
    with np.load(tmp_path / "plain.npz") as f:
        assert f["labels"].tolist() == [0, 1, 2, 3]


def test_generate_class_refusals(tmp_path, cond_ckpt, mnist_root):
    with pytest.raises(UserError, match=r"--class 12 is not a class of this checkpoint: its classes are 0, 1, .*9"):
        generate(str(cond_ckpt), "--class", "12", "-o", str(tmp_path / "x.png"))
    run(tmp_path / "plain", *tiny("gan"), *mnist(mnist_root), "trainer.max_steps=1")
    plain = tmp_path / "plain" / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match="--class 3 needs a class-conditional checkpoint"):
        generate(str(plain), "--class", "3", "-o", str(tmp_path / "x.png"))
    generate(str(plain), "-n", "2", "-o", str(tmp_path / "plain.npz"))
    with np.load(tmp_path / "plain.npz") as f:
        assert "labels" not in f.files     # unconditional output unchanged


# ----------------------------------------------------------------------------------- class_accuracy
class Lookup(torch.nn.Module):
    """A 'conditional generator' that returns a real image of class (c + shift) % K for class c."""

    def __init__(self, bank: torch.Tensor, shift: int):
        super().__init__()
        self.bank, self.shift, self.z_dim, self.num_classes = bank, shift, 4, len(bank)

    def forward(self, z, c):
        return self.bank[(c + self.shift) % self.num_classes]


def test_class_accuracy_is_the_share_generated_in_the_asked_class(tmp_path, data_cfg):
    from gantrain.metrics import build_evaluator
    from tests.test_metrics import digits, mcfg

    digit_root = tmp_path / "digits"   # test_metrics' rendered digits, written as MNIST IDX
    for split, n, seed in (("train", 300, 0), ("t10k", 100, 1)):
        x, y = digits(n, seed)
        write_idx(digit_root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", x)
        write_idx(digit_root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", y)

    cfg_data = data_cfg("mnist", root=str(digit_root))
    data = build_dataset(cfg_data, device=torch.device("cpu"), labels=True)
    x, y = data.real_samples(200), data.real_labels(200)
    bank = torch.stack([x[y == k][0] for k in range(10)])
    ev = build_evaluator(mcfg(tmp_path, num_samples=100, classifier_steps=60), data, cfg_data, torch.device("cpu"))
    assert "class_accuracy" in ev.names
    right, wrong = ev.evaluate(Lookup(bank, 0)), ev.evaluate(Lookup(bank, 1))
    assert right["class_accuracy"] >= 0.9 and wrong["class_accuracy"] <= 0.1
    plain = build_dataset(cfg_data, device=torch.device("cpu"))
    assert "class_accuracy" not in build_evaluator(mcfg(tmp_path, classifier_steps=60), plain, cfg_data,
                                                   torch.device("cpu")).names
    with pytest.raises(UserError, match="class_accuracy needs a class-conditional model"):
        build_evaluator(mcfg(tmp_path, names=["class_accuracy"]), plain, cfg_data, torch.device("cpu"))


# ------------------------------------------------------------------------------------------- 2 ranks
def test_two_ranks_train_one_conditional_model(tmp_path, mnist_root):
    """Each rank draws its shard's labels with its images; the ranks end with the same G and D (embeddings
    included), R1 and the metrics (class_accuracy over both ranks' samples) on the way."""
    from gantrain.distributed import launch
    from tests.test_distributed import _train_and_dump

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = make_cfg("log.progress_bar=false", "trainer.device=cpu", *tiny("gan"), *COND, *mnist(mnist_root),
                   "trainer.max_steps=4", "data.batch_size=8",
                   "loss.r1_gamma=1", "loss.r1_interval=2", "log.every_n_steps=2", "metrics.every_n_steps=4",
                   "metrics.num_samples=30", "metrics.classifier_steps=5", f"metrics.cache_dir={tmp_path / 'mc'}",
                   "trainer.devices=2")
    launch.run(_train_and_dump, cfg, str(run_dir))
    d0, d1 = torch.load(tmp_path / "dumps" / "rank0.pt"), torch.load(tmp_path / "dumps" / "rank1.pt")
    assert any("embed" in k for k in d0["D"])
    for net in ("G", "D"):
        for k in d0[net]:
            assert torch.equal(d0[net][k], d1[net][k]), f"{net}.{k} differs between the ranks"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    assert 0.0 <= acc.Scalars("Metrics/class_accuracy")[-1].value <= 1.0


def test_a_labelled_folder_trains_and_generates_by_class_name(tmp_path):
    root = labelled_folder(tmp_path)
    run(tmp_path / "run", *tiny("dcgan"), *COND, "data=folder", f"data.root={root}", "data.resolution=16",
        "data.channels=1", "data.batch_size=4", "trainer.max_steps=2")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert checkpoint.load(ckpt)["class_names"] == ["bright", "dark"]
    assert "of class dark" in generate(str(ckpt), "--class", "dark", "-n", "3", "-o", str(tmp_path / "d.npz"))
    with np.load(tmp_path / "d.npz") as f:
        assert f["labels"].tolist() == [1, 1, 1] and f["images"].shape == (3, 16, 16, 1)
    with pytest.raises(UserError, match=r"its classes are 0 \(bright\), 1 \(dark\)"):
        generate(str(ckpt), "--class", "cat", "-o", str(tmp_path / "c.png"))
