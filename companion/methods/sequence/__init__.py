"""Masks in sequence models: attention, inputs, prompts."""
