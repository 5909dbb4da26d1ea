"""What the launcher checks before any Ray work: data, model, tools, placement, the multimodal payload budget."""
