"""trainer.precision=auto: bf16 where the CPU flags (or the GPU) say bf16 is native, fp32 elsewhere; the choice is
logged and written into the run's config (checkpoint, HParams), so a resume sees what the run trained in."""

from __future__ import annotations

import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from gantrain import checkpoint, runtime
from gantrain.training.loop import train
from tests.utils import FAST, make_cfg, tiny

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags,expected", [
    ("fpu sse avx512f avx512_bf16 amx_bf16 amx_tile", ["amx_bf16", "avx512_bf16"]),
    ("fpu sse avx512f avx512_bf16", ["avx512_bf16"]),
    ("fpu sse avx2 avx512f", []),
])
def test_cpu_flags_decide_auto(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert runtime.cpu_bf16_flags(info) == expected
    assert runtime.resolve_precision("auto", CPU, info) == ("bf16" if expected else "32")
    assert runtime.resolve_precision("16", CPU, info) == "16" and runtime.resolve_precision("32", CPU, info) == "32"


def test_no_cpuinfo_means_fp32(tmp_path):
    assert runtime.resolve_precision("auto", CPU, tmp_path / "missing") == "32"


def test_auto_is_logged_once_and_stored_in_the_config_and_hparams(tmp_path, caplog):
    chosen = runtime.resolve_precision("auto", CPU)  # this machine's answer
    common = [*FAST, *tiny("gan"), "data=sine", "data.size=256", "data.batch_size=8", "log.every_n_steps=2",
              "trainer.precision=auto"]
    with caplog.at_level(logging.INFO, logger="gantrain.runtime"):
        train(make_cfg(*common, "trainer.max_steps=2"), tmp_path / "run")
    assert [r.getMessage().split(" on ")[0] for r in caplog.records] == [f"trainer.precision=auto: {chosen}"]
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["config"]["trainer"]["precision"] == chosen
    content = EventAccumulator(str(tmp_path / "run")).Reload().PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    value = start.session_start_info.hparams["trainer.precision"]
    assert (value.string_value or str(int(value.number_value))) == chosen
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gantrain.training.state"):  # resuming with auto: nothing changed
        train(make_cfg(*common, "trainer.max_steps=4", "resume=auto"), tmp_path / "run")
    assert not [r for r in caplog.records if "precision" in r.getMessage()]
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4
