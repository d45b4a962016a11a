"""uniq_hub.training."""
