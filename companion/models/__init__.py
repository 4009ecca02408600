"""Small, readable models shared by the notebooks (one file per family, timm-style interface).

Every classifier has ``forward_features(x)``, ``forward_head(features)`` and ``forward(x)``. The transformers
share one ``Attention``, ``MLP``, ``Block`` and ``PatchEmbed`` from :mod:`companion.models.layers`.
"""

from .clip import ToyCLIP
from .cnn import BasicBlock, ResNet, SmallCNN, resnet18_like
from .dit import DiT, DiTConfig
from .gpt import GPT, GPTConfig
from .layers import MLP, Attention, Block, KVCache, PatchEmbed, attention_map_hook
from .mae import MAE, MAEConfig, mae_tiny
from .mllm import ToyMLLM, image_tokens
from .msm import MSMEncoder, SpeechClassifier
from .resnet import Bottleneck, ResNet50, load_torchvision_weights, resnet50
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .toy_sd import ToySD
from .unet import UNet
from .video_mae import VideoMAE, VideoMAEConfig
from .vit import ViT, ViTConfig

__all__ = ["BasicBlock", "ResNet", "SmallCNN", "resnet18_like", "ViT", "ViTConfig", "MAE", "MAEConfig", "mae_tiny",
           "VideoMAE", "VideoMAEConfig", "Seq2Seq", "Seq2SeqConfig", "UNet", "ToySD", "DiT", "DiTConfig", "GPT",
           "GPTConfig", "KVCache", "MSMEncoder", "SpeechClassifier", "ToyCLIP", "ToyMLLM", "image_tokens",
           "Attention", "Block", "MLP", "PatchEmbed", "attention_map_hook",
           "Bottleneck", "ResNet50", "resnet50", "load_torchvision_weights"]
