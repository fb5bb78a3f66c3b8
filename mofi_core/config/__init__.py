"""Typed params: one module per ``params.yaml`` section, and the loader (:mod:`.load`).

A section's module is a code dependency of its stage (its defaults and checks decide what the
stage computes); the loader is not (it only reads, merges and refuses).
"""
