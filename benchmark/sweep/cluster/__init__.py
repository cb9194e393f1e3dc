"""Scale-out: a sweep as one submitit job per run, on Slurm or as local processes.

The only place that imports submitit: ``jobs`` (the jobs and the command lines they re-parse),
``markers`` (``submitted.json``), ``scheduler`` (what Slurm or the local processes say),
``backends`` (the executors) and ``submit`` (submission, ``--wait``, the end of the sweep).
"""
