"""The model: the real Qwen2.5 tokenizer (restricted or full), the tiny Qwen2.5-VL, Hub
checkpoints, LoRA and 4-bit loading, and the processor inputs every stage shares."""
