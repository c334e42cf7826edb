"""Modality-agnostic building blocks."""
