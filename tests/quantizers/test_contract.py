"""The contract every registered quantizer backend honours (vqkit/quantizers/base.py).

Parametrized over ``list_quantizers()`` so a newly registered backend is covered automatically.

Variable-token backends (``variable_tokens = True``: the gated quantizer ``gq``) quantize every position
but emit tokens at some of them only: their ``mask`` marks the tokens (a subset of the input mask),
``indices`` are -1 between tokens and ``codes`` holds the id of every position. Where a check is about
every position's id, it reads ``codes`` for them; ``decode(encode(z))`` equals ``z_q`` at the tokens.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import vqkit.quantizers  # noqa: F401  (registers the backends)
from vqkit.quantizers import QuantizerOutput, build_quantizer, list_quantizers
from vqkit.quantizers.registry import quantizer_class

D, K, B, N = 8, 16, 3, 10
NAMES = list_quantizers()
# Small settings of backends that have networks of their own (the gate of gq), and FSQ's levels for K codes (FSQ
# recommends levels for a few sizes only, and K = 16 is not one of them).
SMALL = {"gq": {"max_token_len": 4, "width": 8, "depth": 1, "num_heads": 2}, "fsq": {"levels": [4, 4]}}
# Backends without an auxiliary loss (their loss is 0 with a graph): gradients reach the latents through z_q only.
LOSS_FREE = {"fsq"}
# The inner backend of wrappers: options the wrapper does not take go to it.
INNER = {"gq": ("inner", "inner_options")}


def variable(q) -> bool:
    """Whether the backend emits tokens at some positions only (``mask`` = its tokens)."""
    return bool(getattr(q, "variable_tokens", False))


def position_ids(out: QuantizerOutput):
    """The id of every position: ``codes`` for variable-token backends, else ``indices``."""
    codes = getattr(out, "codes", None)
    return out.indices if codes is None else codes


def test_registry_lists_the_builtin_backends():
    assert {"vq", "ema_vq"} <= set(NAMES)
    with pytest.raises(KeyError, match="known"):
        build_quantizer("no-such-quantizer", dim=D, codebook_size=K)


def make(name: str, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {**SMALL.get(name, {}), **kwargs}
    if name in INNER:  # options of the inner backend
        own = _own_params(name)
        inner = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}
        kwargs[INNER[name][1]] = {**kwargs.get(INNER[name][1], {}), **inner}
    return build_quantizer(name, dim=D, codebook_size=K, **kwargs)


def latents(seed: int = 1, dtype: torch.dtype = torch.float32, b: int = B, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, D, generator=g).to(dtype)


def state(q: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in q.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"state {key!r} differs"


def ids_shape(q, *lead: int) -> tuple[int, ...]:
    """Shape of the ids for tokens of shape ``lead``: a trailing stage axis for multi-stage quantizers."""
    return lead if q.num_stages is None else (*lead, q.num_stages)


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_shapes_and_dtypes(name, training, dtype):
    q = make(name).train(training)
    z = latents(dtype=dtype)
    out = q(z)
    assert isinstance(out, QuantizerOutput)
    assert out.z_q.shape == (B, N, D) and out.z_q.dtype == dtype
    assert out.indices.shape == ids_shape(q, B, N) and out.indices.dtype == torch.int64
    ids = position_ids(out)
    assert ids.shape == ids_shape(q, B, N) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < K
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for part in out.losses.values():
        assert part.dim() == 0 and torch.isfinite(part)
    if variable(q):  # tokens at some positions: the last one of each row at least, -1 between them
        assert out.mask.shape == (B, N) and out.mask.dtype == torch.bool and out.mask[:, -1].all()
        assert torch.equal(out.indices[out.mask], ids[out.mask]) and (out.indices[~out.mask] == -1).all()
    else:
        assert out.mask is None


def test_gradients_reach_the_input(name):
    q = make(name).train()
    z = latents().requires_grad_(True)
    out = q(z)
    assert out.loss.requires_grad
    # the decoder's gradient must pass through z_q (straight-through or soft), not stop there
    w = torch.randn(B, N, D, generator=torch.Generator().manual_seed(2))
    (out.z_q * w).sum().backward(retain_graph=True)
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    z.grad = None
    ((out.z_q * w).sum() + out.loss).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_decode_of_encode_equals_forward_in_eval(name):
    q = make(name)
    q.train()
    q(latents(seed=5))  # one training step so the backend is not at its initial state
    q.eval()
    z = latents(seed=6)
    out = q(z)
    ids = q.encode(z)
    assert torch.equal(ids, out.indices)
    if variable(q):
        # only tokens have ids: decode(encode(z)) is z_q at the token positions
        tokens = out.mask
        assert tokens.any() and (ids[~tokens] == -1).all()
        rec = q.decode(ids[tokens])
        torch.testing.assert_close(rec.to(out.z_q.dtype), out.z_q[tokens], atol=1e-6, rtol=1e-6)
        assert q.decode(ids[tokens][:3].reshape(1, -1)).shape == (1, min(3, int(tokens.sum())), D)
        return
    rec = q.decode(ids)
    assert rec.shape == (B, N, D)
    if q.soft:
        # soft: z_q mixes codes with the posterior; decode gives the hard code of its argmax
        torch.testing.assert_close(rec, q.codebook[ids], atol=0, rtol=0)
        assert not torch.allclose(rec, out.z_q.float())
    else:
        torch.testing.assert_close(rec.to(out.z_q.dtype), out.z_q, atol=1e-6, rtol=1e-6)
    # any shape of ids decodes to (..., D)
    assert q.decode(ids[0, :3]).shape == (3, D)
    torch.testing.assert_close(q.decode(ids[1:, 2]), rec[1:, 2], atol=0, rtol=0)


@pytest.mark.parametrize("training", [True, False])
def test_encode_changes_neither_state_nor_mode(name, training):
    q = make(name).train(training)
    before = state(q)
    ids = q.encode(latents())
    assert ids.shape == ids_shape(q, B, N) and ids.dtype == torch.int64
    assert q.training is training
    assert all(m.training is training for m in q.modules())
    assert_same_state(before, state(q))


def test_codebook_property(name):
    q = make(name)
    cb = q.codebook
    assert cb.shape == ids_shape(q)[::-1] + (K, getattr(q, "code_dim", D))
    assert cb.dtype == torch.float32
    q_small = make(name, code_dim=4) if "code_dim" in _init_params(name) else None
    if q_small is not None:
        assert q_small.codebook.shape == ids_shape(q_small)[::-1] + (K, 4)
        assert q_small(latents()).z_q.shape == (B, N, D)


def _own_params(name: str) -> set[str]:
    """The options a backend's constructor accepts: its own, and its parents' where it passes ``**kwargs`` on."""
    import inspect

    params: set[str] = set()
    for cls in quantizer_class(name).__mro__:
        if "__init__" not in vars(cls):
            continue
        signature = inspect.signature(cls.__init__).parameters.values()
        params |= {p.name for p in signature if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in signature):
            break
    return params - {"self"}


def _init_params(name: str) -> set[str]:
    """The options ``make(name, ...)`` accepts: the backend's own, and its inner backend's for wrappers."""
    params = _own_params(name)
    if name in INNER:
        import inspect

        inner = inspect.signature(quantizer_class(name).__init__).parameters[INNER[name][0]].default
        params |= _own_params(inner)
    return params


@pytest.mark.parametrize("training", [True, False])
def test_mask_marks_ignored_positions(name, training):
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(B, N, generator=g) > 0.4
    mask[0, 0], mask[0, 1] = True, False
    z1 = latents()
    z2 = z1.clone()
    z2[~mask] = 50.0 * torch.randn(int((~mask).sum()), D, generator=g)  # very different padding
    q1 = make(name).train(training)
    q2 = copy.deepcopy(q1)

    z1.requires_grad_(True)
    out1 = q1(z1, mask)
    out2 = q2(z2, mask)

    if variable(q1):  # the tokens are some of the unmasked positions
        assert not (out1.mask & ~mask).any() and out1.mask[0, 0]  # position 0 is a run of one (1 is masked)
        assert (position_ids(out1)[~mask] == -1).all()
        assert (position_ids(out1)[mask] >= 0).all() and (position_ids(out1)[mask] < K).all()
        assert torch.equal(out1.mask, out2.mask) and torch.equal(position_ids(out1), position_ids(out2))
    else:
        assert torch.equal(out1.mask, mask)
    assert (out1.indices[~mask] == -1).all()
    tokens = out1.mask
    assert (out1.indices[tokens] >= 0).all() and (out1.indices[tokens] < K).all()
    assert torch.equal(out1.indices, out2.indices)
    torch.testing.assert_close(out1.loss, out2.loss, atol=0, rtol=0)
    assert out1.losses.keys() == out2.losses.keys()
    for key in out1.losses:
        torch.testing.assert_close(out1.losses[key], out2.losses[key], atol=0, rtol=0)
    torch.testing.assert_close(out1.z_q[mask], out2.z_q[mask], atol=0, rtol=0)
    assert torch.isfinite(out1.z_q).all()
    # training statistics (EMA, usage, ...) ignore the padding too
    assert_same_state(state(q1), state(q2))
    # the loss sends no gradient to padding
    out1.loss.backward(retain_graph=True)
    assert (z1.grad[~mask] == 0).all()
    if name in LOSS_FREE:  # a zero loss sends none anywhere; z_q must send it to the tokens only
        assert (z1.grad == 0).all()
        (out1.z_q * torch.randn(out1.z_q.shape, generator=g)).sum().backward()
        assert (z1.grad[~mask] == 0).all()
    assert z1.grad[mask].abs().sum() > 0


def test_mask_does_not_change_unmasked_indices(name):
    q = make(name).eval()
    z = latents()
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[:, ::2] = True
    assert torch.equal(position_ids(q(z, mask))[mask], position_ids(q(z))[mask])
    assert torch.equal(q.encode(z, mask), q(z, mask).indices)


def test_autocast_bf16_keeps_search_and_statistics_fp32(name):
    q_amp = make(name).train()
    q_ref = copy.deepcopy(q_amp)
    # many tokens, so that a search run in bf16 would flip some near-tie assignments
    z = latents(dtype=torch.bfloat16, b=4, n=500).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q_amp(z)
        (out.z_q.float().sum() + out.loss).backward()
    ref = q_ref(z.detach().float())  # same values, no autocast

    assert out.z_q.dtype == torch.bfloat16
    # (variable-token backends: the code of every position; which are tokens is decided by a network under autocast)
    assert torch.equal(position_ids(out), position_ids(ref))
    assert torch.equal(out.z_q, ref.z_q.to(torch.bfloat16))
    torch.testing.assert_close(out.loss.float(), ref.loss, atol=1e-6, rtol=1e-6)
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert q_amp.codebook.dtype == torch.float32
    for key, value in q_amp.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
    # the statistics updated by the step are exactly the fp32 ones
    assert_same_state(state(q_amp), state(q_ref))


def test_rejects_bad_inputs_with_clear_errors(name):
    q = make(name)
    with pytest.raises(ValueError, match=rf"\(batch, tokens, {D}\)"):
        q(torch.randn(B, N, D + 1))
    with pytest.raises(ValueError, match="channels last"):
        q(torch.randn(B * N, D))
    with pytest.raises(ValueError):
        q(torch.randn(B, N, D, 1))
    z = latents()
    z[1, 2, 3] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        q(z)
    z[1, 2, 3] = float("inf")
    with pytest.raises(FloatingPointError):
        q(z)
    with pytest.raises(TypeError, match="floating"):
        q(torch.randint(0, 5, (B, N, D)))
    with pytest.raises(ValueError, match="mask"):
        q(latents(), torch.ones(B, N))  # float mask
    with pytest.raises(ValueError, match="mask"):
        q(latents(), torch.ones(B, N + 1, dtype=torch.bool))


def test_decode_rejects_invalid_ids(name):
    q = make(name)
    valid = re.escape(f"[0, {K - 1}]")
    with pytest.raises(ValueError, match=valid):
        q.decode(torch.tensor([[0, K]]))
    with pytest.raises(ValueError, match=valid):
        q.decode(torch.tensor([3, -1, 2]))
    with pytest.raises(ValueError, match="-1"):
        q.decode(torch.full((2,), -1))
    with pytest.raises(TypeError):
        q.decode(torch.tensor([0.0, 1.0]))
    # the edge ids are fine, also in narrower integer types
    edge = torch.tensor([0, K - 1], dtype=torch.int32)
    if q.num_stages is not None:
        edge = edge.unsqueeze(-1).expand(*ids_shape(q, 2))
    assert q.decode(edge).shape == (2, D)


@pytest.mark.parametrize("training", [True, False])
def test_all_masked_batch_gives_zero_loss_and_no_update(name, training):
    options = {"kmeans_init": True, "dead_code_threshold": 1.0}
    q = make(name, **{k: v for k, v in options.items() if k in _init_params(name)}).train(training)
    before = state(q)
    z = latents().requires_grad_(True)
    out = q(z, torch.zeros(B, N, dtype=torch.bool))
    assert (out.indices == -1).all()
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss)
    (out.loss + out.z_q.sum()).backward()
    assert_same_state(before, state(q))


def test_module_cast_to_low_precision_still_runs(name):
    q = make(name, **({"code_dim": 4} if "code_dim" in _init_params(name) else {})).to(torch.bfloat16).train()
    z = latents(dtype=torch.bfloat16)
    out = q(z)
    assert out.z_q.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert q.codebook.dtype == torch.float32


def test_batch_usage_metrics_values():
    from vqkit.quantizers.base import batch_usage_metrics

    uniform = batch_usage_metrics(torch.tensor([0.0, 5.0, 5.0, 5.0, 0.0, 5.0]))
    assert uniform["perplexity"].item() == pytest.approx(4.0) and uniform["used_codes"].item() == 4
    skewed = batch_usage_metrics(torch.tensor([3.0, 1.0]))
    assert skewed["perplexity"].item() == pytest.approx(float(torch.exp(-(0.75 * torch.log(torch.tensor(0.75))
                                                                           + 0.25 * torch.log(torch.tensor(0.25))))))
    fractional = batch_usage_metrics(torch.tensor([0.5, 0.25, 0.25, 0.0]))  # soft counts below 1
    assert fractional["perplexity"].item() == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25))))
    assert fractional["used_codes"].item() == 3
    empty = batch_usage_metrics(torch.zeros(8))
    assert empty["perplexity"].item() == pytest.approx(1.0) and empty["used_codes"].item() == 0


@pytest.mark.parametrize("training", [True, False])
def test_usage_metrics_come_from_the_base_over_the_batch_ids(name, training):
    """Every single-stage backend reports batch_usage_metrics of the ids it returns (tokens under the mask)."""
    from vqkit.quantizers.base import batch_usage_metrics

    q = make(name).train(training)
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(4)) > 0.3
    out = q(latents(), mask)
    if q.num_stages is not None:  # multi-stage: per stage, from that stage's ids
        for k in range(q.num_stages):
            expected = batch_usage_metrics(torch.bincount(out.indices[..., k][mask], minlength=K).float())
            for key, value in expected.items():
                torch.testing.assert_close(out.metrics[f"stage{k}/{key}"], value)
        return
    expected = batch_usage_metrics(torch.bincount(position_ids(out)[mask], minlength=K).float())
    for key, value in expected.items():
        torch.testing.assert_close(out.metrics[key], value)
