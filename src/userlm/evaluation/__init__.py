"""Evaluating user simulators and assistants."""
