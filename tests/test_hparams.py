"""The HParams tab: the keys a sweep varied, then the commonly compared settings -- not every config key."""

from __future__ import annotations

from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from gantrain.summaries import COMPARED, flatten, hparams_view
from gantrain.training.loop import train
from tests.utils import FAST, make_cfg, tiny

SWEPT = ["model=gan", "optim.discriminator.lr=0.0004", "+model.extra=3", "seed=2", "hydra.run.dir=x", "resume=auto"]


def test_the_view_is_the_swept_keys_then_the_compared_ones():
    flat = flatten(OmegaConf.to_container(make_cfg("optim.discriminator.lr=0.0004", "seed=2"), resolve=True))
    view = hparams_view(flat, SWEPT)
    assert list(view)[:4] == ["model", "optim.discriminator.lr", "model.extra", "seed"]  # swept first, in order
    assert view["model"] == "gan" and view["optim.discriminator.lr"] == 0.0004 and view["seed"] == 2
    assert view["model.extra"] == "3"  # not in this config: the override's own text
    assert set(view) == {"model", "model.extra", *COMPARED}  # no hydra.*, resume, nothing else
    assert "ckpt.every_n_steps" not in view and "data.cache_dir" not in view


def test_a_run_logs_that_view_with_the_final_metrics(tmp_path):
    """A job's HParams entry (read from its event file): Hydra's recorded overrides (here .hydra/overrides.yaml,
    what a spawned rank 0 reads) plus COMPARED, and the metric tags."""
    overrides = [*tiny("gan"), "data.batch_size=16", "trainer.max_steps=2", "optim.generator.lr=0.001"]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), tmp_path / ".hydra" / "overrides.yaml")
    train(make_cfg(*FAST, *overrides), tmp_path)
    acc = EventAccumulator(str(tmp_path)).Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    keys = set(start.session_start_info.hparams)
    assert keys == {"model", "model.generator.hidden", "model.discriminator.hidden", "data.batch_size",
                    "trainer.max_steps", "optim.generator.lr", *COMPARED}, keys
    assert start.session_start_info.hparams["optim.generator.lr"].number_value == 0.001
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {"Loss/G", "Loss/D"} <= {m.name.tag for m in info.metric_infos}
