"""Interactive and promptable segmentation: TETRIS (robustness to click positions)."""
