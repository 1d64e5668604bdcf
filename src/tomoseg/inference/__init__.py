"""Segmenting with a trained run: sliding-window inference, the Predictor, predict/evaluate, whole stacks."""
