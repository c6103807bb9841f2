"""Running at scale: multi-process launches (accelerate, DeepSpeed), the GPU memory planner,
and the laptop pre-flight of the GPU profiles."""
