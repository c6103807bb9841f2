"""How sure a model is of its verdict, read at the one token that decides it.

A greedy answer shows only which verdict won. The probability the model gives the
Abnormal branch at the deciding token (:func:`vadr1_lib.training.sft.verdict_branches`),
with the clip's own reference text before it, shows how far each clip is from the boundary,
and so what a training stage moved: histograms of it for normal and abnormal clips, before
and after each stage, separate when the model looks at the video and overlap when it does not.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vadr1_lib.config import Profile
from vadr1_lib.data import dataset
from vadr1_lib.model import modeling
from vadr1_lib.progress import TextProgress
from vadr1_lib.training import sft


def abnormal_probabilities(model_path: str | Path, records: list[dataset.SFTRecord], profile: Profile, *,
                           reference: list[dataset.SFTRecord] = (), loaded: tuple | None = None) -> list[float | None]:
    """Per record, P(Abnormal branch) / P(either branch) at its deciding token, teacher-forced
    with its own target text up to there; None where its target has no deciding token.

    ``reference`` (the training targets) adds the ways a verdict can continue that the
    records' own targets do not show, so both branches are known at every deciding token.
    """
    model, processor = loaded or modeling.load_model_and_processor(str(model_path), profile)
    model.eval()
    tokenizer = processor.tokenizer
    corpus = [*records, *reference]
    targets = [tokenizer(r.target_text, add_special_tokens=False)["input_ids"] for r in corpus]
    branches = sft.verdict_branches(targets, [not r.is_abnormal for r in corpus])[: len(records)]
    collator = sft.VideoSFTCollator(processor, profile)
    probabilities: list[float | None] = []
    with TextProgress(len(records), f"verdict probabilities of {Path(str(model_path)).name}", "clip") as progress:
        for record, (decision, normal_next, abnormal_next) in zip(records, branches):
            progress.update()
            if decision < 0 or not normal_next or not abnormal_next:
                probabilities.append(None)
                continue
            example = dict(collator.examples((str(record.path), record.target_text)))
            position = int(example.pop("reply_mask")[0].nonzero()[0]) + decision
            with torch.no_grad():
                logits = model(**{k: v.to(model.device) for k, v in example.items()}).logits[0, position - 1]
            p = logits.float().softmax(-1)
            abnormal = p[sorted(abnormal_next)].sum()
            probabilities.append(float(abnormal / (abnormal + p[sorted(normal_next)].sum())))
    return probabilities
