"""Augmentations: SSL view recipes, strong augmentation, style transfer, generative views."""
