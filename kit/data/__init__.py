"""Data: cleaning, filters, dedup, BPE, packing, augmentation, temperature sampling, shards (torch, no lightning)."""
