"""Diffusion and image editing: watermarking and protection of images against editing."""
