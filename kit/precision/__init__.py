"""Mixed precision: dynamic loss scaling and gradient clipping that works with fused optimizers."""
