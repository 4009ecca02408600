"""Masked image (and video) modelling."""
