"""Text model (TextTokenizer + gated quantizer): masks and targets against their definitions, the loss terms
against a direct computation, the split metrics, gradients, the fixed baseline, parameter groups."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from vqkit.lit import TokenizerModule
from vqkit.losses import Compression, LengthHead, LossInputs, SegmentReconstruction
from vqkit.metrics import BytesPerToken, ExactTokens, SegmentByteAccuracy
from vqkit.modalities.text import ByteEncoder, SegmentDecoder, predicted_lengths, window_targets
from vqkit.modalities.text_bytes import PAD_ID
from vqkit.models import ModelOutput, TextTokenizer
from vqkit.models.compat import IncompatibleQuantizerError
from vqkit.quantizers import GatedQuantizer, GatedQuantizerOutput, build_quantizer
from vqkit.quantizers.gq import enforce_max_length, segment_lengths, segment_mask

K = 4
CODEBOOK_RULE = [{"match": r"^model\.quantizer\.inner\.", "lr_scale": 10.0, "weight_decay": 0.0}]


def gated(segmentation: str = "learned", inner: str = "vq", **inner_options) -> GatedQuantizer:
    return GatedQuantizer(8, 16, inner=inner, inner_options={"kmeans_init": False, **inner_options},
                          segmentation=segmentation, fixed_length=K, max_token_len=K, width=16, depth=1, num_heads=2)


def tiny(segmentation: str = "learned", inner: str = "vq", **inner_options) -> TextTokenizer:
    torch.manual_seed(0)
    encoder = ByteEncoder(8, width=16, depth=1, num_heads=2)
    decoder = SegmentDecoder(8, width=16, depth=1, max_token_len=K)
    return TextTokenizer(encoder, decoder, gated(segmentation, inner, **inner_options))


def terms(alpha: float = 2.0) -> dict[str, torch.nn.Module]:
    return {"rec": SegmentReconstruction(), "mask": LengthHead(), "compression": Compression(weight=alpha)}


def loss_values(model: TextTokenizer, x: torch.Tensor, alpha: float = 2.0) -> tuple[ModelOutput, dict]:
    out = model(x)
    batch = LossInputs(inputs=x, data=x, output=out)
    return out, {name: term(batch) for name, term in terms(alpha).items()}


def rows() -> torch.Tensor:
    x = torch.randint(0, 256, (3, 6), generator=torch.Generator().manual_seed(0))
    x[0, 4:] = PAD_ID
    x[2, 1:] = PAD_ID
    return x


def test_segment_mask_matches_its_definition() -> None:
    g = torch.rand(2, 7)
    m = segment_mask(g, K)
    for b in range(2):
        for t in range(7):
            for j in range(K):
                expected = 0.0 if t - j < 0 else float(torch.prod(1 - g[b, t - j : t]))
                assert m[b, t, K - 1 - j] == pytest.approx(expected, abs=1e-6)


def test_window_targets_and_lengths() -> None:
    x = torch.tensor([[5, 6, 7, PAD_ID]])
    w = window_targets(x, 3)
    assert w[0, 0].tolist() == [PAD_ID, PAD_ID, 5] and w[0, 2].tolist() == [5, 6, 7]
    boundaries = torch.tensor([[False, True, False, True, True]])
    assert segment_lengths(boundaries)[0].tolist() == [1, 2, 1, 2, 1]
    logits = torch.full((1, 4), -20.0)
    logits[0, 1] = 20.0  # slot 1 starts the segment: 3 bytes
    assert int(predicted_lengths(logits)) == 3


def test_max_length_cuts_long_tokens() -> None:
    valid = torch.ones(1, 10, dtype=torch.bool)
    out = enforce_max_length(torch.zeros(1, 10, dtype=torch.bool), valid, 4)
    assert out[0].nonzero().squeeze(1).tolist() == [3, 7]
    assert segment_lengths(out)[0, 3] == 4


@pytest.mark.parametrize("inner", ["vq", "ema_vq"])
def test_forward_shapes_losses_and_gradients(inner: str) -> None:
    model = tiny(inner=inner)
    x = rows()
    out, losses = loss_values(model, x)
    valid = x != PAD_ID
    m = int(valid.sum())
    q = out.quantized
    assert out.reconstruction.shape == (m, K, 256) and out.extras["length_logits"].shape == (m, K)
    assert q.gates.shape == x.shape and q.segment_mask.shape == (*x.shape, K)
    assert out.extras["segment_mask"].shape == (m, K)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert (q.gates[~valid] == 0).all() and (q.indices[~valid] == -1).all() and (q.codes[~valid] == -1).all()
    assert (q.codes[valid] >= 0).all()  # every real byte is quantized ...
    assert torch.equal(q.indices[q.mask], q.codes[q.mask]) and (q.indices[~q.mask] == -1).all()  # ... tokens only
    ends = torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert (q.gates[ends] == 1).all() and q.mask[ends].all()  # row ends always end a token
    assert torch.equal(q.valid, valid) and not (q.mask & ~valid).any()
    assert torch.equal(losses["compression"], q.losses["compression"]) and "compression" in q.losses
    total = sum(losses.values()) + q.loss
    total.backward()
    assert model.encoder.embed.weight.grad.abs().sum() > 0
    assert model.quantizer.gate.inp.weight.grad.abs().sum() > 0  # the gate learns through the soft mask and compression


def test_loss_terms_match_a_direct_computation() -> None:
    model = tiny()
    x = rows()
    out, losses = loss_values(model, x)
    q = out.quantized
    valid = (x != PAD_ID).tolist()
    n_real = sum(map(sum, valid))
    logits, length_logits = out.reconstruction.detach(), out.extras["length_logits"].detach()
    rec = mask_loss = 0.0
    i = 0  # index of the real position among the M real positions (row-major)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if not valid[b][t]:
                continue
            p_in = torch.softmax(length_logits[i], -1).cumsum(-1).clamp(1e-6, 1 - 1e-6)
            bce = 0.0
            for j in range(K):  # slot K-1-j holds byte t-j
                slot = K - 1 - j
                m = 0.0 if t - j < 0 else math.prod(1.0 - float(q.gates[b, t - i_].detach()) for i_ in range(1, j + 1))
                if t - j >= 0:
                    rec += m * float(F.cross_entropy(logits[i, slot][None], x[b, t - j][None]))
                bce -= m * math.log(p_in[slot]) + (1 - m) * math.log(1 - p_in[slot])
            mask_loss += float(q.gates[b, t].detach()) * bce / K
            i += 1
    assert float(losses["rec"].detach()) == pytest.approx(rec / (n_real * K), rel=1e-5)
    assert float(losses["mask"].detach()) == pytest.approx(mask_loss / n_real, rel=1e-5)
    assert float(losses["compression"].detach()) == pytest.approx(float(q.gates.sum()) / n_real, rel=1e-6)


def _output(boundaries: list[int], windows: list[list[int]], decoded: list[list[int]],
            lengths: list[int]) -> ModelOutput:
    """A one-row ModelOutput with every real byte valid, chosen token ends, argmax bytes and length-head lengths."""
    targets = torch.tensor(windows)
    logits = torch.full((*targets.shape, 256), -10.0)
    logits.scatter_(-1, torch.tensor(decoded).clamp_max(255)[..., None], 10.0)
    length_logits = torch.full(targets.shape, -20.0)
    length_logits[torch.arange(len(lengths)), K - torch.tensor(lengths)] = 20.0  # slot K-L starts L bytes
    ends = torch.tensor([boundaries], dtype=torch.bool)
    quantized = GatedQuantizerOutput(z_q=torch.zeros(1, len(lengths), 8), indices=torch.zeros(1, len(lengths)).long(),
                                     loss=torch.zeros(()), mask=ends)
    extras = {"valid": torch.ones_like(ends), "targets": targets, "length_logits": length_logits}
    return ModelOutput(reconstruction=logits, quantized=quantized, latents=torch.zeros(1, len(lengths), 8),
                       extras=extras)


def test_split_metrics_pool_counts_over_batches() -> None:
    p = PAD_ID
    # bytes 1 2 3 4, tokens "1 2" (ends at 1) and "3 4" (ends at 3)
    windows = [[p, p, p, 1], [p, p, 1, 2], [p, 1, 2, 3], [1, 2, 3, 4]]
    right = _output([0, 1, 0, 1], windows, windows, [1, 2, 1, 2])  # both tokens exact
    wrong = [[p, p, p, 1], [p, p, 9, 2], [p, 1, 2, 3], [1, 2, 3, 4]]  # the first token's first byte is wrong
    short = _output([0, 1, 0, 1], windows, wrong, [1, 2, 1, 1])  # ... and the second token's length
    metrics = {"bpt": BytesPerToken(), "exact": ExactTokens(), "bytes": SegmentByteAccuracy()}
    for m in metrics.values():
        m.update(right, None)
    assert float(metrics["exact"].compute()) == 1.0 and float(metrics["bytes"].compute()) == 1.0
    for m in metrics.values():
        m.update(short, None)
    assert float(metrics["bpt"].compute()) == 2.0  # 8 bytes / 4 tokens
    assert float(metrics["exact"].compute()) == 0.5  # 2 of 4 tokens (the second batch's are both wrong)
    assert float(metrics["bytes"].compute()) == 7 / 8  # one wrong byte of 8 (lengths do not count here)
    for m in metrics.values():
        assert all(getattr(m, name).dtype == torch.long for name in m._defaults)
        assert all(m._reductions[name] is not None for name in m._defaults)  # summed across processes


def test_fixed_baseline_cuts_every_k_bytes_and_at_row_ends() -> None:
    model = tiny("fixed")
    assert model.quantizer.gate is None
    x = torch.randint(0, 256, (2, 9))
    x[1, 6:] = PAD_ID
    boundaries, codes, _ = model.segment(x)
    assert boundaries[0].nonzero().squeeze(1).tolist() == [3, 7, 8]
    assert boundaries[1].nonzero().squeeze(1).tolist() == [3, 5]
    out, losses = loss_values(model, x)
    assert torch.equal(out.quantized.mask, boundaries)
    # nothing to train
    assert float(losses["compression"].detach()) == 0.0 and float(out.quantized.losses["compression"]) > 0
    # fixed_length < max_token_len: a cut every fixed_length bytes
    q = GatedQuantizer(8, 16, segmentation="fixed", fixed_length=3, max_token_len=5)
    valid = torch.ones(1, 8, dtype=torch.bool)
    assert q(torch.randn(1, 8, 8), valid).mask[0].nonzero().squeeze(1).tolist() == [2, 5, 7]


def test_compression_weight_lowers_gates() -> None:
    x = torch.randint(0, 256, (8, 8), generator=torch.Generator().manual_seed(1))
    means = []
    for alpha in (0.0, 50.0):
        model = tiny()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(30):
            out, losses = loss_values(model, x, alpha)
            total = losses["rec"] + losses["mask"] + alpha * losses["compression"] + out.quantized.loss
            opt.zero_grad()
            total.backward()
            opt.step()
        means.append(float(losses["compression"].detach()))
    assert means[1] < means[0]


def test_code_strings_have_predicted_lengths() -> None:
    model = tiny()
    strings = model.code_strings()
    assert len(strings) == 16 and all(1 <= len(s) <= K for s in strings)
    assert model.decode(torch.tensor([3, 0])) == [strings[3], strings[0]]


def test_encode_gives_the_codes_of_the_tokens() -> None:
    model = tiny().eval()
    x = rows()
    ids = model.encode(x)
    boundaries, codes, _ = model.segment(x)
    assert torch.equal(ids[boundaries], codes[boundaries]) and (ids[~boundaries] == -1).all()
    assert torch.equal(model(x).quantized.indices, ids)  # forward's token codes (eval) are encode's


def test_text_model_needs_the_gated_quantizer() -> None:
    encoder, decoder = ByteEncoder(8, 16, 1, 2), SegmentDecoder(8, 16, 1, K)
    with pytest.raises(IncompatibleQuantizerError, match="cannot use quantizer=vq .*quantizer=gq"):
        TextTokenizer(encoder, decoder, build_quantizer("vq", dim=8, codebook_size=16))
    with pytest.raises(ValueError, match="max_token_len"):
        TextTokenizer(encoder, SegmentDecoder(8, 16, 1, K + 1), gated())
    with pytest.raises(ValueError, match="normalization"):
        TextTokenizer(encoder, decoder, gated(), normalization={"mean": 0.5, "std": 0.5})
    with pytest.raises(ValueError, match="segmentation"):
        GatedQuantizer(8, 16, segmentation="random")
    with pytest.raises(ValueError, match="fixed_length"):
        GatedQuantizer(8, 16, segmentation="fixed", fixed_length=11, max_token_len=10)
    with pytest.raises(ValueError, match="single-stage"):
        GatedQuantizer(8, 16, inner="residual")
    with pytest.raises(ValueError, match="inner_options"):
        GatedQuantizer(8, 16, inner_options={"dim": 4})


def test_gate_is_decayed_like_the_encoder_and_the_codebook_gets_its_learning_rate() -> None:
    model = tiny()
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4)
    module = TokenizerModule(model, optimizer, losses=terms(), param_groups=CODEBOOK_RULE)
    names = {id(p): n for n, p in module.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in module.parameter_groups()]
    decayed, not_decayed, codebook = groups
    assert {"model.quantizer.gate.inp.weight", "model.quantizer.gate.convs.0.weight",
            "model.quantizer.gate.transformer.blocks.0.attn.qkv.weight"} <= set(decayed)
    assert {"model.quantizer.gate.inp.bias", "model.quantizer.gate.transformer.norm.weight",
            "model.encoder.embed.weight"} <= set(not_decayed)
    assert codebook == ["model.quantizer.inner.embedding"]
    built = module.build_optimizer(optimizer, module.parameter_groups())
    assert [g["lr"] for g in built.param_groups] == [1e-3, 1e-3, pytest.approx(1e-2)]
    assert [g["weight_decay"] for g in built.param_groups] == [1e-4, 0.0, 0.0]


@pytest.mark.parametrize("inner", ["vq", "ema_vq"])
def test_reservoir_revival_of_the_inner_backend_revives_dead_codes(inner: str) -> None:
    model = tiny(inner=inner, revival="reservoir", reservoir_size=32, reservoir_per_step=8, revive_every=2)
    inner_q = model.quantizer.inner
    before = inner_q.codebook.detach().clone()
    model.train()
    x = torch.randint(0, 256, (4, 6))
    model(x)
    revival = inner_q.revival
    assert revival.filled == 8 and int(revival.counts_since_revival.sum()) == int((x != PAD_ID).sum())
    assert torch.equal(inner_q.codebook, before) or inner == "ema_vq"  # no revival before step 2
    model(x)
    used = revival.counts_since_revival.sum()
    changed = (inner_q.codebook.detach() != before).any(-1)
    assert revival.filled == 16 and used == 0  # the counts start again after a revival
    assert changed.sum() > 0  # codes no position used were replaced by reservoir latents


@pytest.mark.parametrize("detach_target", [False, True])
def test_mask_loss_trains_the_gate_through_its_target_unless_detached(detach_target: bool) -> None:
    model = tiny()
    x = rows()
    out = model(x)
    mask_loss = LengthHead(detach_target=detach_target)(LossInputs(inputs=x, data=x, output=out))
    gate = [p for p in model.quantizer.gate.parameters() if p.requires_grad]
    grads = torch.autograd.grad(mask_loss, gate, allow_unused=True)
    reach = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reach is not detach_target  # GQ-VAE's code (False) keeps the soft mask's graph
    assert LengthHead().detach_target is True  # vqkit's default: measured better on the CPU recipe


def test_passthrough_warmup_decodes_the_continuous_latents_then_every_code_is_replaced() -> None:
    model = tiny(revival="reservoir", reservoir_size=64, reservoir_per_step=4, passthrough_steps=2,
                 reservoir_reset=True)
    inner_q = model.quantizer.inner
    model.train()
    x = torch.randint(0, 256, (4, 6), generator=torch.Generator().manual_seed(1))
    start = inner_q.codebook.detach().clone()
    latents = []
    for step in (1, 2):
        out = model(x)
        valid = out.extras["valid"]
        assert torch.equal(out.quantized.z_q[valid], out.latents[valid])  # gate and decoder read z itself
        latents.append(out.latents[valid].detach())
        if step == 1:
            assert inner_q.revival.filled == int(valid.sum()) and torch.equal(inner_q.codebook, start)
    seen = torch.cat(latents)
    codes = inner_q.codebook.detach()
    assert inner_q.revival.num_revived == inner_q.codebook_size and inner_q.revival.filled == 0
    exact = torch.cdist(codes, seen, compute_mode="donot_use_mm_for_euclid_dist")  # the mm form errs by ~1e-3
    assert (exact.min(1).values < 1e-6).all()  # every code is a warm-up latent
    out = model(x)
    valid = out.extras["valid"]
    assert not torch.equal(out.quantized.z_q[valid], out.latents[valid])  # step 3: quantized
