"""Declarative reading rules: physical validity, alert thresholds, deadband, time sampling.

Each rule kind is a small pure function in its own module; :mod:`gateway.process.rules.engine` selects the
rule for a reading (first match by device and metric glob) and keeps the per-series state.
"""
