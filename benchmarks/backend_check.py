"""Whether a vqkit backend can be built with given options in this checkout, asked before a benchmark cell runs.

Shared by benchmarks/quantizer_speed.py and benchmarks/codebook_utilization.py: a cell whose backend is not
registered, or that sets an option the backend does not take, is recorded as ``missing-backend`` instead of
failing in its subprocess.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

MISSING = "missing-backend"


def missing_backend(name: str, options: Iterable[str]) -> str | None:
    """Why ``build_quantizer(name, dim=..., **options)`` cannot work here, or None when it can.

    Args:
        name: the registry name, e.g. ``"fsq"``.
        options: the keyword arguments the cell passes besides ``dim``.

    Returns:
        e.g. ``"fsq is not registered"`` or ``"vq has no option estimator"``; None when every option is a
        parameter of the registered class (or the class takes ``**kwargs``).
    """
    from vqkit.quantizers import list_quantizers
    from vqkit.quantizers.registry import quantizer_class

    if name not in list_quantizers():
        return f"{name} is not registered"
    params = inspect.signature(quantizer_class(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    unknown = sorted(set(options) - set(params))
    return f"{name} has no option {', '.join(unknown)}" if unknown else None
