"""Multi-scale mel-spectrogram reconstruction loss for waveforms (EnCodec / DAC style).

For each window ``w`` in ``windows`` (hop ``w / 4``, ``n_fft = w``) the mel spectrograms
(torchaudio ``MelSpectrogram``, power 1) of the reconstruction and the target are
compared by

* ``mel_l1``: mean |M(x_hat) - M(x)| (EnCodec's L1 term),
* ``mel_l2``: mean (M(x_hat) - M(x))^2 (EnCodec's L2 term),
* ``log_mel_l1``: mean |log10(M(x_hat) + eps) - log10(M(x) + eps)| (DAC's term; it weighs
  quiet time-frequency bins as much as loud ones, which speech intelligibility needs),

each averaged over the scales; plus ``waveform_l1``, the mean absolute sample error
(EnCodec weights it 0.1). The mel bands of a scale are ``min(n_mels, w // 8)`` so that
short windows do not get empty filters. Spectrograms run in fp32, also under autocast.
A weight of 0 means the term is computed and logged but not optimized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchaudio.transforms import MelSpectrogram

from vqkit.losses.base import LossInputs, LossTerm


class MultiScaleMelLoss(LossTerm):
    """The multi-scale mel term: ``distance(x_hat (B, 1, T), x (B, 1, T)) -> (weighted sum, {part: value})``.

    Its value is the sum of its parts weighted by ``mel_l1`` .. ``waveform_l1``; the module multiplies it by
    ``weight``. Every part is logged (``<name>/mel_l1``, ...).

    Args:
        sample_rate: Hz of the waveforms (sets the mel scale).
        windows: STFT window lengths (EnCodec: 2^5 .. 2^11; shorter catch transients, longer pitch).
        n_mels: mel bands at the longest windows.
        mel_l1: weight of the linear-mel L1 term.
        mel_l2: weight of the linear-mel L2 term.
        log_mel_l1: weight of the log-mel L1 term.
        waveform_l1: weight of the sample-domain L1 term.
        log_eps: floor added before the log.
        weight, warmup_steps: see ``LossTerm``.
    """

    def __init__(
        self,
        sample_rate: int,
        windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: int = 64,
        mel_l1: float = 1.0,
        mel_l2: float = 1.0,
        log_mel_l1: float = 1.0,
        waveform_l1: float = 0.1,
        log_eps: float = 1e-5,
        weight: float = 1.0,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(weight, warmup_steps)
        if not windows or min(windows) < 8:
            raise ValueError(f"windows must be STFT lengths >= 8 samples, got {list(windows)}")
        weights = {"mel_l1": mel_l1, "mel_l2": mel_l2, "log_mel_l1": log_mel_l1, "waveform_l1": waveform_l1}
        if min(weights.values()) < 0:
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        self.weights = weights
        self.windows = tuple(int(w) for w in windows)
        self.log_eps = log_eps
        self.mels = nn.ModuleList(
            MelSpectrogram(
                sample_rate=sample_rate,
                n_fft=w,
                win_length=w,
                hop_length=max(w // 4, 1),
                n_mels=max(min(n_mels, w // 8), 1),
                power=1.0,
                normalized=True,
                center=True,
            )
            for w in self.windows
        )

    def forward(self, batch: LossInputs) -> tuple[Tensor, dict[str, Tensor]]:
        return self.distance(batch.output.reconstruction, batch.inputs)

    def distance(self, x_hat: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted sum of the parts, unweighted parts) between two waveform batches of one shape."""
        if x_hat.shape != x.shape or x.dim() not in (2, 3):
            raise ValueError(
                f"expected reconstruction and target waveforms of one shape (B, 1, T), got {tuple(x_hat.shape)} "
                f"and {tuple(x.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_hat, x = x_hat.float(), x.float()
            terms = {name: x.new_zeros(()) for name in ("mel_l1", "mel_l2", "log_mel_l1")}
            for mel in self.mels:
                m_hat, m = mel(x_hat), mel(x)
                diff = m_hat - m
                terms["mel_l1"] = terms["mel_l1"] + diff.abs().mean()
                terms["mel_l2"] = terms["mel_l2"] + diff.pow(2).mean()
                log_diff = torch.log10(m_hat + self.log_eps) - torch.log10(m + self.log_eps)
                terms["log_mel_l1"] = terms["log_mel_l1"] + log_diff.abs().mean()
            terms = {name: value / len(self.mels) for name, value in terms.items()}
            terms["waveform_l1"] = (x_hat - x).abs().mean()
            total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
