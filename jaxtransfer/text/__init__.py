"""Text: tokenizers that travel with checkpoints (and, in later issues, text data and objectives)."""
