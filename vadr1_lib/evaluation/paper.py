"""The paper's own figures, for the notebooks to set beside a run's, always labelled as the paper's.

From Vad-R1 (arXiv 2505.19877 v1), Qwen2.5-VL-7B on the Vad-Reasoning test set; read from a
text conversion of the paper, so treat the third decimal with care (``docs/vad-r1.md``,
"Reported results"). Nothing here is measured by this project: a run's figures come from its
own predictions, these only say what the paper reported at its scale.
"""

from __future__ import annotations

SOURCE = "Vad-R1 paper (arXiv 2505.19877 v1), Qwen2.5-VL-7B, Vad-Reasoning test set"

# Table 1, "Effectiveness of anomaly reasoning": one untrained model prompted three ways.
# The project's "direct" and "p2c" prompts stand for its Direct Answer and Structured Reasoning rows.
TABLE1_QWEN25_VL_7B: dict[str, dict[str, float]] = {
    "Direct Answer": {"BLEU-2": 0.184, "METEOR": 0.339, "recall": 0.431, "F1": 0.597},
    "Random Reasoning": {"BLEU-2": 0.179, "METEOR": 0.328, "recall": 0.377, "F1": 0.540},
    "Structured Reasoning (P2C-CoT)": {"BLEU-2": 0.198, "METEOR": 0.352, "recall": 0.696, "F1": 0.730},
}
PROMPT_KIND_ROWS = {"direct": "Direct Answer", "p2c": "Structured Reasoning (P2C-CoT)"}

# Table 4, "Comparison of different training strategies" (precision and mIoU are the release's
# reading: mIoU over every test video, a right Normal counting 1).
TABLE4: dict[str, dict[str, float]] = {
    "Qwen2.5-VL": {"BLEU-2": 0.113, "ROUGE-L": 0.477, "precision": 0.768, "mIoU": 0.567, "R@0.5": 0.563},
    "+SFT": {"BLEU-2": 0.219, "ROUGE-L": 0.429, "precision": 0.712, "mIoU": 0.612, "R@0.5": 0.599},
    "+AVA-GRPO": {"BLEU-2": 0.143, "ROUGE-L": 0.486, "precision": 0.810, "mIoU": 0.675, "R@0.5": 0.661},
    "+SFT+AVA-GRPO": {"BLEU-2": 0.233, "ROUGE-L": 0.501, "precision": 0.882, "mIoU": 0.713, "R@0.5": 0.706},
}

# Appendix, "Ablation results of different reward strategies", 16 frames: plain GRPO against AVA-GRPO
# after the same SFT.
REWARD_ABLATION_16_FRAMES: dict[str, dict[str, float]] = {
    "GRPO": {"precision": 0.861, "mIoU": 0.712, "R@0.5": 0.699},
    "AVA-GRPO": {"precision": 0.882, "mIoU": 0.713, "R@0.5": 0.706},
}
