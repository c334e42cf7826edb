"""bf16-mixed training on CPU for every modality, with quantization kept in fp32.

A forward hook on the quantizer sees the latents autocast hands it (bf16 from a bf16 encoder) and the
ids it returns; the ids must be those an fp32 search over the fp32 codebook gives for the same latents,
and every quantizer parameter and buffer must still be fp32 after the optimizer steps.
"""

from __future__ import annotations

import pytest
import torch

from vqkit.lit.run_config import module_from_config
from vqkit.quantizers.search import nearest_code
from vqkit.train import train

# name -> overrides picking the modality's model, data and a hard quantizer (fast settings come from make_config).
# No dead-code revival: it rewrites codes after the search inside the forward, before the hook can re-search.
MODALITIES = {
    "image": ["quantizer=vq", "quantizer.dead_code_threshold=0.0"],
    "audio": ["data=speech", "model=audio_conv", "quantizer=vq", "quantizer.dead_code_threshold=0.0",
              "callbacks.audio_samples=null"],
    "text": ["data=shakespeare", "model=text_gq"],
}


@pytest.mark.parametrize("modality", sorted(MODALITIES))
def test_bf16_mixed_training_keeps_quantization_fp32(modality: str, make_config, monkeypatch) -> None:
    seen: list[tuple[torch.dtype, bool, bool]] = []

    def spy(module, args, output) -> None:
        z = args[0]
        flat = z.detach().float().reshape(-1, z.shape[-1])
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            # the searched space: factorized / l2-normalized codes (vq's defaults) project the latents first
            flat = module.to_code_space(flat) if hasattr(module, "to_code_space") else flat
        expected, _ = nearest_code(flat, module.codebook.detach().float())
        got = output.indices.reshape(-1)
        valid = got >= 0
        seen.append((z.dtype, bool(torch.equal(got[valid], expected[valid])), torch.is_autocast_enabled("cpu")))

    def hooked_module_from_config(cfg, *args):
        module = module_from_config(cfg, *args)
        module.model.quantizer.register_forward_hook(spy)
        hooked_module_from_config.model = module.model
        return module

    monkeypatch.setattr("vqkit.train.module_from_config", hooked_module_from_config)
    result = train(make_config(*MODALITIES[modality], "debug=fdr", "trainer.precision=bf16-mixed"))
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    assert seen, "the quantizer never ran"
    assert any(dtype == torch.bfloat16 for dtype, _, _ in seen), f"autocast never handed bf16 latents: {seen}"
    assert all(same for _, same, _ in seen), "ids differ from an fp32 search: the search did not run in fp32"
    quantizer = hooked_module_from_config.model.quantizer
    for name, tensor in [*quantizer.named_parameters(), *quantizer.named_buffers()]:
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, f"quantizer state {name} is {tensor.dtype}"
