"""Several processes training one model. One process (the default) needs none of this: every helper is a
no-op when the world has one rank.

* :mod:`.env`: what the launcher says (torchrun's variables, SLURM's mapped onto them), before any process
  group exists; the Hydra overrides of ranks > 0.
* :mod:`.collectives`: this rank and the world, broadcasts, gathers, all-reduces, agreeing to stop.
* :mod:`.launch`: joining the process group, running the training on the ranks the job asks for
  (``trainer.devices=N`` spawns them here), and the one error of a job whose rank failed.
* :mod:`.ddp`: the models under ``DistributedDataParallel`` (the views the loop trains through), building on
  rank 0 first.
* :mod:`.evaluation`: the sample-quality evaluation shared by the ranks (the Evaluator's ``Shards``).
"""
