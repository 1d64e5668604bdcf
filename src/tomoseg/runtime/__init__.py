"""What training and inference share: devices and precision, the checkpoint format, the decision rule."""
