"""Paper experiments: presets run as stages (train -> sample -> eval), table sweeps, SLURM plumbing.

- :mod:`camvid.experiments.stages`: what one job of a sweep runs, each stage resumable/skippable.
- :mod:`camvid.experiments.split_sampling`: the test split sampled across ranks, each sample once.
- :mod:`camvid.experiments.cluster`: the distributed environment from SLURM/submitit, preemption.
- :mod:`camvid.experiments.tables`: finished jobs collected into the paper's layout (``make table``).
"""
