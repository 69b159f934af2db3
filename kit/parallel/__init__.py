"""Distribution: gradient compression, DDP comm hooks, and the Lightning strategy presets (``strategies``)."""
