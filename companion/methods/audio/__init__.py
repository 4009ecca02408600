"""Masks in audio and music: spectrogram and frame masks, inpainting masks on piano rolls."""
