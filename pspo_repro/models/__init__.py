"""Models: a model name resolved to weights and a tokenizer, the tiny warm-started models, generation."""
