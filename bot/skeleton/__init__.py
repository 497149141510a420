"""A DEX-style infra tree (base + overlays/preview): local mode seeds a repository with it."""
