"""Data preparation: chat logs in, filtered and split conversation records out, intents added."""
