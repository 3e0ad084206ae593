"""Model management and the shipped models.

Light modules (numpy only, safe for the daemon): ``manifest``, ``synthetic``, ``datasets``.
Training and export modules (``architecture``, ``export``, ``training``) import torch and
belong to the optional ``[train]`` extra.
"""
