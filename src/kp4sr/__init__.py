"""kp4sr: knowledge prompt-tuning for sequential recommendation (Zhai et al., ACM MM 2023)."""

__version__ = "0.1.0"
