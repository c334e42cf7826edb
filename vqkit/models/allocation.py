"""A ceiling on the tensors a block of code may create, checked before each one is allocated.

An artifact's weights say how big its model is; its ``config.json`` only claims it. While the model is
built from a config, ``allocation_limit`` refuses any tensor-creating call (``torch.empty``, ``zeros``,
``randn``, ``full``, ``eye``, ``arange``, ``Tensor.new_*``, ``repeat``, ...) that would make a tensor of more
than ``max_elements`` elements, bring the elements made so far above ``max_total`` or the tensors made above
``max_tensors``, before it runs: a
``codebook_size`` of 2**40 fails at once instead of allocating (with Linux overcommit: filling) memory.
It is a ``TorchFunctionMode``, i.e. Python-level torch calls only, which is how modules create parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


class AllocationRefused(MemoryError):
    """A tensor beyond the limits was asked for: ``what`` it would exceed (a message), with the call's ``shape``."""

    def __init__(self, function: str, shape: tuple[int, ...], what: str) -> None:
        self.function, self.shape = function, shape
        super().__init__(f"{function}{shape} {what}")


_SIZED = {  # functions whose arguments (after `self` for methods) are a size: (*ints) or (sequence)
    torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.empty_strided,
    torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_empty_strided,
}
_SIZE_FIRST = {torch.full, torch.Tensor.new_full}  # (size, fill_value)
_METHODS = {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full,
            torch.Tensor.new_empty_strided}


def _ints(values: Sequence[Any]) -> list[int] | None:
    return [int(v) for v in values] if all(isinstance(v, int | torch.SymInt) for v in values) else None


def _size(args: tuple[Any, ...]) -> list[int] | None:
    """``(3, 4)`` or ``((3, 4),)`` -> [3, 4]."""
    if len(args) >= 1 and isinstance(args[0], Sequence | torch.Size) and not isinstance(args[0], str):
        return _ints(list(args[0]))
    leading = []
    for a in args:
        if not isinstance(a, int) or isinstance(a, bool):
            break
        leading.append(a)
    return leading or None


def requested_shape(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[int, ...], int] | None:
    """(shape, elements) of the tensor ``func(*args, **kwargs)`` would create, when it is a creating call."""
    if func in _SIZED or func in _SIZE_FIRST:
        rest = args[1:] if func in _METHODS else args
        size = kwargs.get("size")
        shape = _ints(list(size)) if size is not None else _size(rest[:1] if func in _SIZE_FIRST else rest)
    elif func is torch.randint:  # (high, size) or (low, high, size)
        sizes = [a for a in args if isinstance(a, Sequence | torch.Size)] or [kwargs.get("size", ())]
        shape = _ints(list(sizes[0]))
    elif func is torch.eye:
        n = args[0] if args else kwargs.get("n", 0)
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
        shape = [int(n), int(m)]
    elif func is torch.randperm:
        shape = [int(args[0] if args else kwargs.get("n", 0))]
    elif func in (torch.linspace, torch.logspace):
        shape = [int(args[2] if len(args) > 2 else kwargs.get("steps", 0))]
    elif func is torch.arange:  # (end), (start, end) or (start, end, step)
        numbers = [float(a) for a in args if isinstance(a, int | float)]
        start, end, step = {1: (0.0, *numbers, 1.0), 2: (*numbers, 1.0), 3: tuple(numbers)}.get(
            len(numbers), (0.0, 0.0, 1.0))
        start, end, step = (float(kwargs.get("start", start)), float(kwargs.get("end", end)),
                            float(kwargs.get("step", step)))
        shape = [max(0, math.ceil((end - start) / step)) if step else 0]
    elif func is torch.Tensor.repeat:
        repeats = _size(args[1:])
        base = list(args[0].shape)
        if repeats is None:
            return None
        base = [1] * (len(repeats) - len(base)) + base
        shape = [b * r for b, r in zip(base, repeats, strict=False)]
    elif func is torch.Tensor.expand:  # a view, but then materialised by whatever follows
        sizes = _size(args[1:])
        if sizes is None:
            return None
        own = [1] * (len(sizes) - args[0].dim()) + list(args[0].shape)
        shape = [o if s == -1 else s for s, o in zip(sizes, own, strict=False)]
    else:
        return None
    if shape is None:
        return None
    return tuple(shape), math.prod(max(0, s) for s in shape)


class allocation_limit(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """``with allocation_limit(max_elements, max_total, max_tensors): ...``: refuse tensors beyond the limits
    before they are made.

    Args:
        max_elements: most elements of any one tensor.
        max_total: most elements of all the tensors made inside the block together (views and tensors computed
            from existing ones are not counted: they are bounded by those).
        max_tensors: most tensors made (a module per layer makes a few: this bounds a depth of millions).

    Raises (inside the block):
        AllocationRefused: a creating call beyond a limit; nothing was allocated for it.
    """

    def __init__(self, max_elements: int, max_total: int, max_tensors: int | None = None) -> None:
        super().__init__()
        self.max_elements, self.max_total = int(max_elements), int(max_total)
        self.max_tensors = max_tensors
        self.total = self.tensors = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        requested = requested_shape(func, args, kwargs)
        if requested is not None:
            shape, elements = requested
            name = getattr(func, "__name__", str(func))
            if elements > self.max_elements:
                raise AllocationRefused(name, shape, f"asks for {elements:,} elements, more than the "
                                                     f"{self.max_elements:,} allowed")
            if func is not torch.Tensor.expand:
                if self.total + elements > self.max_total:
                    raise AllocationRefused(name, shape, f"would bring the tensors made to {self.total + elements:,} "
                                                         f"elements, more than the {self.max_total:,} allowed")
                if self.max_tensors is not None and self.tensors >= self.max_tensors:
                    raise AllocationRefused(name, shape, f"would be tensor number {self.tensors + 1:,}, more than "
                                                         f"the {self.max_tensors:,} allowed")
                self.total += elements
                self.tensors += 1
        return func(*args, **kwargs)
