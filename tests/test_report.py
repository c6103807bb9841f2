"""The README's results table, written from the metrics JSON of a run (never by hand)."""

from vadr1_lib import notebook
from vadr1_lib.evaluation import report

FIGURES = {"format": {"valid_rate": 0.9}, "detection": {"accuracy": 0.8, "precision": 0.75, "recall": 0.9, "f1": 0.82},
           "temporal": {"miou": 0.6}, "strict": {"temporal": {"miou": 0.4}, "ci95": {"detection.accuracy": [0.7, 0.9]}},
           "text": {"bleu2": 0.5, "meteor": 0.6, "rougeL": 0.55}}


def test_the_table_shows_each_model_and_what_rl_changed_with_paired_intervals(private_runs, ci_profile, tmp_path):
    notebook.save_metrics(ci_profile, "05_evaluation", {"models": {"SFT": FIGURES}, "test_videos": 120})
    notebook.save_metrics(ci_profile, "04_ava_grpo", {"wall_seconds": {"GRPO": 100.0, "AVA-GRPO": 120.0}, "paired": {
        "GRPO vs SFT": {"detection.accuracy": {"difference": 0.05, "ci95": [0.01, 0.09], "fixed": 8, "broken": 2,
                                               "resolvable": 0.0556},
                        "detection.f1": {"difference": -0.02, "ci95": [-0.06, 0.03]}}}})
    text = report.results_markdown(ci_profile)
    assert "| SFT | 0.900 | 0.800 [0.70, 0.90] | 0.750 | 0.900 | 0.820 | 0.600 | 0.400 | 0.500 | 0.600 | 0.550 |" in text
    assert "120 videos" in text and "GRPO / AVA-GRPO: 100 s / 120 s" in text
    assert "| GRPO vs SFT | +0.050 [+0.01, +0.09] | -0.020 [-0.06, +0.03] | – | – | – |" in text
    assert "GRPO vs SFT: 8 fixed, 2 broken, resolvable from ±0.056." in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.START}\nold\n{report.END}\nrest\n")
    report.write_readme(ci_profile, readme)
    assert readme.read_text() == f"intro\n{report.START}\n{text}\n{report.END}\nrest\n"


def test_the_table_says_how_many_empty_predictions_the_text_figures_skipped(private_runs, ci_profile):
    base = {**FIGURES, "text": {**FIGURES["text"], "n": 3, "skipped_empty": 117}}
    sft = {**FIGURES, "text": {**FIGURES["text"], "n": 120, "skipped_empty": 0}}
    notebook.save_metrics(ci_profile, "05_evaluation", {"models": {"base": base, "SFT": sft}, "test_videos": 120})
    text = report.results_markdown(ci_profile)
    assert ("Text figures: base: 117 empty predictions skipped in BLEU/METEOR/ROUGE (release rule; the strict "
            "BLEU-4 scores them 0).") in text
    assert "SFT: 0 empty" not in text  # a model that skipped none gets no note
