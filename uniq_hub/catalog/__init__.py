"""uniq_hub.catalog: the zoo's entries and recipes, its model cards and release folders (below training and hub)."""
