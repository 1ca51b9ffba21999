"""Training: AGCL (stage 1), extractor SFT, RAR / GRPO (stage 2) and the pipeline."""
