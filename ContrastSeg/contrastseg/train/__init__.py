"""Supervised training of both stages, and the checkpoint/resume machinery every training run shares."""
