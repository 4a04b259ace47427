"""Segmentation networks (Keras 3, backend-neutral)."""
