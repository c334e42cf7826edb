"""AdversarialTokenizerModule: TokenizerModule + a discriminator (VQGAN / EnCodec recipes).

Only the adversarial part lives here: the discriminator, its loss and LeCAM regulariser, the adaptive
weight and the two-optimizer manual step. Perceptual (LPIPS), reconstruction, spectral and REPA terms
are ordinary entries of ``losses:`` (see TokenizerModule), so LPIPS works without a GAN too.

Steps. Each training batch makes one generator update and, from ``disc_start`` on, one
discriminator update. Lightning's ``trainer.global_step`` counts the calls to
``LightningOptimizer.step()`` in manual optimization, so stepping both optimizers that
way would advance it by 1 per batch before ``disc_start`` and by 2 after (and
``max_steps`` would stop mid-schedule). This module steps the discriminator's optimizer
through the strategy directly (same precision/strategy handling, no step count), so:

* ``trainer.global_step`` = generator updates = training batches, as with TokenizerModule;
* ``trainer.max_steps`` = training batches; LR schedules, loss warm-ups, checkpoint names, logging and
  ``disc_start`` all use that count; a resumed run continues from it;
* ``disc_start = N``: batches ``0 .. N-1`` train the generator only (no discriminator
  forward); from batch ``N`` on the generator gets the adversarial term and the
  discriminator is updated. The discriminator scheduler starts at ``disc_start`` and
  spans ``max_steps - disc_start`` steps.

Gradient clipping. Lightning refuses ``Trainer(gradient_clip_val=...)`` with manual
optimization (``MisconfigurationException`` before any module hook runs): run with
``trainer.gradient_clip_val=null``; this module clips both optimizers' gradients by norm
with its own ``gradient_clip_val``.

Distributed. The discriminator update's backward leaves the encoder, quantizer and
decoder without gradients, so DDP needs ``trainer.strategy.find_unused_parameters=true``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.optim import Optimizer

from vqkit.layers.diffaug import DiffAugment
from vqkit.lit.tokenizer_module import OptimizerFactory, SchedulerFactory, TokenizerModule
from vqkit.losses.adversarial import (
    GAN_LOSSES,
    GanLoss,
    LeCAMRegularizer,
    adaptive_generator_weight,
    consistency_loss,
    discriminator_loss,
    generator_loss,
)


class AdversarialTokenizerModule(TokenizerModule):
    """Tokenizer trained on its loss terms + an adversarial loss.

    Generator update (every batch)::

        base  = TokenizerModule's loss (weighted terms at this step + quantizer loss)
        total = base + [step >= disc_start] * disc_weight * lambda * g_loss(D(aug(x_hat)))
        lambda = ||grad_W base|| / (||grad_W g_loss|| + 1e-4)   (W: decoder's last weight; 1 if not adaptive)

    Only the reconstruction-side terms reach the decoder's output layer, so
    ``grad_W base`` is VQGAN's ``grad_W nll``.

    Discriminator update (from ``disc_start`` on)::

        d_total = disc_loss_weight * (d_loss(D(aug(x)), D(aug(sg(x_hat)))) + lecam_weight * lecam)
                  + cr_weight * mse([D(aug(x)), D(aug(sg(x_hat)))], [D(strong(x)), D(strong(sg(x_hat)))])

    ``x_hat`` is the reconstruction of the generator update of the same batch. ``aug`` is ``diff_augment``
    (identity when None), drawn afresh for every call, so real and fake inputs are augmented alike but
    independently. The last line is the balanced consistency regularisation (bCR, Zhao et al. 2021) as
    SoftVQ-VAE has it: the logits of the (weakly augmented) inputs against those of a strong augmentation
    ``cr_augment`` of the same inputs, gradients through both. A weight of 0 (``disc_weight``,
    ``lecam_weight``) means the term is computed and logged but not optimized; ``cr_weight=0`` skips it.

    Args:
        discriminator: maps normalized data to logits (e.g. ``NLayerDiscriminator``).
        disc_optimizer: factory of the discriminator's optimizer over its parameters.
        disc_scheduler: optional discriminator LR schedule ``(optimizer, total_steps=...)``,
            over ``max_steps - disc_start`` steps.
        disc_weight: weight of the generator's adversarial loss (times the adaptive weight).
        disc_start: first step (training batch) with the adversarial terms.
        gan_loss: ``"hinge"`` or ``"non_saturating"`` (for both networks).
        adaptive_weight: scale the adversarial loss by VQGAN's gradient-norm ratio.
        lecam_weight: weight of the LeCAM regulariser of the discriminator.
        lecam_decay: EMA decay of LeCAM's logit anchors.
        disc_loss_weight: factor of the discriminator's adversarial loss and LeCAM term (SoftVQ-VAE uses its
            ``disc_weight`` 0.2 here too; the consistency term is not scaled by it).
        diff_augment: differentiable augmentation (``vqkit.layers.diffaug.DiffAugment``) of every
            discriminator input, real and fake, in both updates; None: none.
        cr_weight: weight of the consistency regularisation of the discriminator; 0: off.
        cr_augment: its strong augmentation; None: ``DiffAugment(cutout=0.5, prob=1.0)``.
        gradient_clip_val: max gradient norm of each optimizer's parameters; None or 0: no clipping.
        last_layer: name of the decoder parameter for the adaptive weight; None: the last
            decoder parameter with 2 or more dimensions (its output convolution).
        **kwargs: TokenizerModule's arguments (model, losses, optimizer and scheduler of the generator,
            metrics, param_groups).
    """

    def __init__(
        self,
        discriminator: nn.Module,
        disc_optimizer: OptimizerFactory,
        disc_scheduler: SchedulerFactory | None = None,
        disc_weight: float = 0.2,
        disc_start: int = 0,
        gan_loss: GanLoss = "hinge",
        adaptive_weight: bool = True,
        lecam_weight: float = 0.0,
        lecam_decay: float = 0.999,
        disc_loss_weight: float = 1.0,
        diff_augment: nn.Module | None = None,
        cr_weight: float = 0.0,
        cr_augment: nn.Module | None = None,
        gradient_clip_val: float | None = 1.0,
        last_layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if min(disc_weight, lecam_weight, disc_loss_weight, cr_weight) < 0:
            raise ValueError(
                f"loss weights must be >= 0, got disc_weight={disc_weight}, lecam_weight={lecam_weight}, "
                f"disc_loss_weight={disc_loss_weight}, cr_weight={cr_weight}"
            )
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"unknown gan_loss {gan_loss!r}; expected one of {GAN_LOSSES}")
        if disc_start < 0:
            raise ValueError(f"disc_start must be >= 0, got {disc_start}")
        self.automatic_optimization = False
        self.discriminator = discriminator
        self.disc_optimizer_factory = disc_optimizer
        self.disc_scheduler_factory = disc_scheduler
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.gan_loss = gan_loss
        self.adaptive_weight = adaptive_weight
        self.lecam_weight = lecam_weight
        self.lecam = LeCAMRegularizer(lecam_decay)
        self.disc_loss_weight = disc_loss_weight
        self.diff_augment = diff_augment
        self.cr_weight = cr_weight
        if cr_weight and cr_augment is None:
            cr_augment = DiffAugment(cutout=0.5, prob=1.0)
        self.cr_augment = cr_augment if cr_weight else None
        self.gradient_clip_val = gradient_clip_val
        decoder = self.model.decoder
        weights = [name for name, p in decoder.named_parameters() if p.ndim >= 2]
        if last_layer is None:
            last_layer = weights[-1]
        elif last_layer not in dict(decoder.named_parameters()):
            raise ValueError(f"last_layer {last_layer!r} is not a decoder parameter; its weights are {weights}")
        self.last_layer = last_layer

    # --- training ---------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # generator updates so far; the generator's step below increments it
        x = self._data(batch)
        opt_g, opt_d = self.optimizers()
        adversarial = step >= self.disc_start

        with self.toggled_optimizer(opt_g):
            total, out, logs = self.compute_losses(x, step)
            x_hat = out.reconstruction
            if adversarial:
                g_loss = generator_loss(self.discriminator(self._augment(x_hat)), self.gan_loss)
                if self.adaptive_weight:
                    weight = adaptive_generator_weight(total, g_loss, self.model.decoder.get_parameter(self.last_layer))
                else:
                    weight = torch.ones((), device=g_loss.device)
                if self.disc_weight > 0:
                    total = total + self.disc_weight * weight * g_loss
                logs.update({"g_loss": g_loss.detach(), "adaptive_weight": weight, "loss": total.detach()})
            self.check_finite(total, logs, "generator loss")
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(total)
            self._clip(opt_g)
            opt_g.step()
        self._step_scheduler(opt_g.optimizer)

        if adversarial:
            real = self.model.normalize(x)
            logs.update(self._discriminator_step(opt_d.optimizer, real, x_hat.detach(), step))
        self.log_train(logs, out, x.shape[0])

    def _discriminator_step(self, optimizer: Optimizer, real: Tensor, fake: Tensor, step: int) -> dict[str, Tensor]:
        """One discriminator update on data and detached reconstructions; returns its logs."""
        with self.toggled_optimizer(optimizer):
            logits_real = self.discriminator(self._augment(real))
            logits_fake = self.discriminator(self._augment(fake))
            d_loss = discriminator_loss(logits_real, logits_fake, self.gan_loss)
            d_total = d_loss
            logs = {
                "d_loss": d_loss.detach(),
                "logits_real": logits_real.detach().float().mean(),
                "logits_fake": logits_fake.detach().float().mean(),
            }
            lecam = self.lecam(logits_real, logits_fake)
            logs["lecam"] = lecam.detach()
            if self.lecam_weight > 0:
                d_total = d_total + self.lecam_weight * lecam
            if self.disc_loss_weight != 1.0:
                d_total = self.disc_loss_weight * d_total
            if self.cr_augment is not None:
                strong = torch.cat([self.discriminator(self.cr_augment(real)),
                                    self.discriminator(self.cr_augment(fake))])
                cr = consistency_loss(torch.cat([logits_real, logits_fake]), strong)
                logs["cr"] = cr.detach()
                d_total = d_total + self.cr_weight * cr
            if not torch.isfinite(d_total):
                raise FloatingPointError(
                    f"non-finite discriminator loss at step {step}: {({k: float(v) for k, v in logs.items()})}. "
                    "Lower the discriminator's learning rate (module.disc_optimizer.lr) or enable gradient clipping."
                )
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(d_total)
            self._clip(optimizer)
            # Through the strategy (precision plugin, scaler) but not LightningOptimizer.step(): that would count
            # a second optimizer step per batch in trainer.global_step (see the module docstring).
            self.trainer.strategy.optimizer_step(optimizer, closure=lambda: None)
        self._step_scheduler(optimizer)
        return logs

    def _augment(self, images: Tensor) -> Tensor:
        return images if self.diff_augment is None else self.diff_augment(images)

    def _clip(self, optimizer: Optimizer | LightningOptimizer) -> None:
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def _step_scheduler(self, optimizer: Optimizer) -> None:
        for config in self.trainer.lr_scheduler_configs:
            if config.scheduler.optimizer is optimizer:
                config.scheduler.step()

    # --- optimization -----------------------------------------------------------------
    def trainable_parameters(self):
        """The generator's parameters (see TokenizerModule), without the discriminator's."""
        return ((name, p) for name, p in super().trainable_parameters() if not name.startswith("discriminator."))

    def configure_optimizers(self) -> Any:
        opt_g = self.build_optimizer(self.optimizer_factory, self.parameter_groups())
        # a frozen backbone (PretrainedFeatureDiscriminator) stays out of the optimizer
        opt_d = self.disc_optimizer_factory([p for p in self.discriminator.parameters() if p.requires_grad])
        total = int(self.trainer.estimated_stepping_batches)
        schedulers = []
        if self.scheduler_factory is not None:
            schedulers.append({"scheduler": self.scheduler_factory(opt_g, total_steps=total), "interval": "step"})
        if self.disc_scheduler_factory is not None:
            disc = self.disc_scheduler_factory(opt_d, total_steps=max(total - self.disc_start, 1))
            schedulers.append({"scheduler": disc, "interval": "step", "name": "lr-discriminator"})
        return [opt_g, opt_d], schedulers
