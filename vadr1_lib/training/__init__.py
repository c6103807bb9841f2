"""Stage 2, training: what SFT and GRPO share (trainer arguments, train-resume-save, the stage
marker, caches), supervised fine-tuning, and (AVA-)GRPO with its rewards."""
