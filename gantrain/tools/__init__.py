"""Developer tools, not part of a training run: each is ``python -m gantrain.tools.NAME``.

* ``bench``: the loop against its ceiling and a hand-written loop (``make bench``, docs/BENCHMARKS.md);
* ``bench_memory``: peak memory of a step with and without ``trainer.accumulate``;
* ``syncs``: where the training loop makes the host wait for the device;
* ``flops``: model FLOPs per image and the device's GEMM peak (used by ``bench``).
"""
