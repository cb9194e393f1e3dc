"""WHAT to run and WHERE: the plan of a sweep, its teachers, and the executors (in process or jobs).

Rule: ``sweep/`` reads the parsed command line (``options``) and drives ``train/`` for each run;
nothing below it imports ``sweep/``, and only ``sweep/cluster/`` imports submitit.
"""
