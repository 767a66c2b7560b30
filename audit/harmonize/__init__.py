"""Harmonization: geometry (orientation, spacing), intensity, labels and metadata.

Import submodules directly (``audit.harmonize.geometry``, ``audit.harmonize.intensity``, ...).
"""
