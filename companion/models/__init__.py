"""Small, readable models shared by the notebooks (one file per family, timm-style interface).

Every classifier has ``forward_features(x)``, ``forward_head(features)`` and ``forward(x)``.
"""

from .cnn import BasicBlock, ResNet, SmallCNN, resnet18_like
from .vit import ViT, ViTConfig

__all__ = ["BasicBlock", "ResNet", "SmallCNN", "resnet18_like", "ViT", "ViTConfig"]
