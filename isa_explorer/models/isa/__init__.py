"""ISANet: the interlaced sparse self-attention decoder and the smp model around it."""
