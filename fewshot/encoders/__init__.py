"""Shared encoder layer (CLIP, DINOv2, CNN backbones). See ``base.Encoder``."""

from fewshot.encoders.base import Encoder, WeightInfo

__all__ = ["Encoder", "WeightInfo"]
