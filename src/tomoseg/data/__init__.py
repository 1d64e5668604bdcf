"""Training data: normalisation, random crops, augmentation (MONAI), class statistics, the Lightning DataModule.

Modules importing torch (``augment``, ``datamodule``) are imported only where needed."""
