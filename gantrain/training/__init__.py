"""The training of one run, one module per stage (``train`` is :func:`gantrain.training.loop.train`):

- ``loop.py``: ``train()``: setup -> build -> resume -> steps -> finish, and one training step;
- ``build.py``: the device and seeds, then data, networks, optimisers, EMA, evaluator and trackers;
- ``steps.py``: the D step, the G step (on a ``StepContext``) and the generator EMA;
- ``state.py``: ``TrainState``, the checkpoint's contents written and loaded side by side; resuming;
- ``periodic.py``: scalars, sample grids, evaluations and checkpoints every so many steps;
- ``stopping.py``: signals, max steps and early stopping;
- ``best.py`` (``ckpt.best``), ``health.py`` (``Health/*``), ``finetune.py`` (``init_from``, FreezeD).
"""
