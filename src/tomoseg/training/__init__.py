"""Training on Lightning: the LightningModule, run recording, the Trainer factory, the learning-rate finder."""
