"""uniq_hub.deploy."""
