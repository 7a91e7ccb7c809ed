"""SwAV self-supervised training pieces: model, loss, optimizer and schedule, multi-crop data."""
