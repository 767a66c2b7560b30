"""spine-audit: external validation and fairness auditing for spine MRI segmentation models."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
