"""Installers and repairs of the environment (``python -m benchmark.tools.<name>``).

Rule: scripts; nothing of the benchmark imports them.
"""
