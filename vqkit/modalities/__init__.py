"""Encoder/decoder pairs per modality; each maps data to channels-last tokens (B, N, D) and back."""
