"""Training user models: data preparation, tokenizer and model preparation, the trainer."""
