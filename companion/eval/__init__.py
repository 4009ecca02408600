"""Evaluation shared across families: counted FLOPs (:mod:`.flops`), scores (:mod:`.scores`: multi-label
mAP, bit accuracy, mask IoU, IoU@k, NoC) and scores of generated or restored images (:mod:`.generative`:
PSNR, Fréchet distance / toy-FID, held-out denoising loss per timestep bucket) and linear probes on frozen
features (:mod:`.probes`: logistic and ridge, per-item results). Import as ``from companion
import eval as evaluation`` or name the functions (``from companion.eval import count_flops``): ``eval`` is
also a Python builtin."""

from .flops import active_channel_flops, count_flops, layer_flops, training_step_flops
from .generative import denoising_loss_by_bucket, frechet_distance, pooled_features, psnr, toy_fid
from .probes import linear_probe, ridge_probe
from .scores import bit_accuracy, iou_at_k, mask_iou, mean_average_precision, noc

__all__ = ["active_channel_flops", "bit_accuracy", "count_flops", "denoising_loss_by_bucket", "frechet_distance",
           "iou_at_k", "layer_flops", "linear_probe", "mask_iou", "mean_average_precision", "noc", "pooled_features",
           "psnr", "ridge_probe", "toy_fid", "training_step_flops"]
