"""Training recipes (torch; part of the optional ``[train]`` extra)."""
