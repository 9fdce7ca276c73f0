"""TensorBoard event files of a resumed run are read after the run they continue."""

from __future__ import annotations

import os
import socket
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gantrain.summaries import Summaries


def test_a_resume_in_the_same_second_still_sorts_after_the_earlier_event_file(tmp_path):
    first = Summaries(tmp_path)
    first.scalars({"Loss/D": 1.0}, 1)
    first.scalars({"Loss/D": 1.0}, 2)
    first.close()
    (old,) = tmp_path.glob("events.out.tfevents.*")
    # the earlier file as a writer of this process with a later counter would have named it in this second:
    # by name it sorts after any new file of the same second ("...pid.99" > "...pid.1")
    stamp = int(time.time())
    renamed = tmp_path / f"events.out.tfevents.{stamp:010d}.{socket.gethostname()}.{os.getpid()}.99"
    old.rename(renamed)
    resumed = Summaries(tmp_path, purge_step=3)
    resumed.scalars({"Loss/D": 2.0}, 3)
    resumed.scalars({"Loss/D": 2.0}, 4)
    resumed.close()
    files = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert files[0] == renamed, files
    steps = [e.step for e in EventAccumulator(str(tmp_path)).Reload().Scalars("Loss/D")]
    assert steps == [1, 2, 3, 4]
