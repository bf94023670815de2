"""sslaug: reproduce self-supervised-learning augmentation papers end to end."""

__version__ = "0.1.0"
