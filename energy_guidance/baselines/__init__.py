"""Baselines that a guided sampler must beat, built on the same parts:

dps_guidance                        DPS-style guidance: ∇ of β·E(x̂0), no variance term
train_contrastive_energy, draw_support, contrastive_loss
                                    QGPO's contrastive energy prediction (CEP)
"""

from .contrastive import contrastive_loss, draw_support, train_contrastive_energy
from .dps import dps_guidance

__all__ = ["contrastive_loss", "dps_guidance", "draw_support", "train_contrastive_energy"]
