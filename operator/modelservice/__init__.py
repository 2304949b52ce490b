"""ModelService operator: one resource becomes a running, GPU-aware model service."""

__version__ = "0.1.0"
