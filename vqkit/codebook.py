"""Deprecated alias of ``vqkit.tools.codebook`` (the CLI is ``python -m vqkit.tools.codebook``).

Kept only for the in-constructor build of ``VQGANLCQuantizer(build=...)``, which imports
``vqkit.codebook.build_codebook``; the issue-13 redesign removes that argument (the codebook is built by
the ``prepare:`` step, ``vqkit.tools.codebook.ensure_codebook``), and this file goes with it.
tests/test_layering.py fails once nothing imports this module any more.
"""

from __future__ import annotations

import warnings

from vqkit.tools.codebook import build_codebook

warnings.warn(
    "vqkit.codebook moved to vqkit.tools.codebook; use the prepare: step (vqkit.tools.codebook.ensure_codebook) "
    "instead of quantizer.build",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["build_codebook"]
