"""uniq_hub.hub."""
