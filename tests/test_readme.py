"""The README's ```python snippets run, and every `expr.shape  # (a, b, c)` comment in them is true.

(```py blocks need files a user makes first, like a trained tokenizer: tests/test_export.py,
tests/image/test_artifact.py and tests/audio/test_train_tokenizer.py cover them.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SHAPE_COMMENT = re.compile(r"^(?P<expr>[^#=]+?\.shape)\s+#\s*\((?P<shape>[\d,\s]+)\)")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets() -> None:
    assert python_blocks(), "README.md lost its Python usage snippet"


@pytest.mark.parametrize("block", python_blocks())
def test_readme_snippet_runs_and_shapes_hold(block: str) -> None:
    torch.manual_seed(0)
    namespace: dict = {}
    checked = 0
    for line in block.splitlines():
        exec(compile(line, str(README), "exec"), namespace)  # noqa: S102 - our own README
        match = SHAPE_COMMENT.match(line)
        if match:
            expected = tuple(int(v) for v in match["shape"].split(",") if v.strip())
            assert tuple(eval(match["expr"], namespace)) == expected, line  # noqa: S307
            checked += 1
    assert checked > 0, "no shape comment was checked"
