import json
import re
from collections import Counter

import pytest

from vadr1_lib.data import taxonomy
from vadr1_lib.data.taxonomy import (
    ABNORMAL,
    NORMAL,
    UNKNOWN,
    UnknownLabelError,
    normalize_label,
)


def test_tree_has_3_types_37_sub_classes_each_knowing_its_place():
    assert taxonomy.TYPES == ("Human Activity", "Environment", "Objects")
    # The paper says 12 main classes but names 10 (docs/vad-r1.md), and only named ones are here.
    assert len(taxonomy.MAIN_CLASSES) == len(set(taxonomy.MAIN_CLASSES)) == 10
    assert len(taxonomy.CATEGORIES) == len(set(taxonomy.CATEGORIES)) == 37
    per_type = Counter(sub.type for sub in taxonomy.SUB_CLASSES.values())
    assert per_type == {"Human Activity": 13, "Environment": 16, "Objects": 8}
    for type_name, mains in taxonomy.TAXONOMY.items():
        for main, subs in mains.items():
            for sub in subs:
                assert taxonomy.SUB_CLASSES[sub] == taxonomy.SubClass(name=sub, main_class=main, type=type_name)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Red Lgiht Violation", "Red Light Violation"),
        ("Avalanche and \u200bLandslide", "Avalanche and Landslide"),
        ("Animal Hurts Human", "Animals Hurt Human"),
        ("Animals Hurt Human", "Animals Hurt Human"),
        ("Drown", "Drowning"),
        ("Falling objects", "Falling Objects"),
        ("  wrong way   driving ", "Wrong-Way Driving"),
        ("WRONG-WAY DRIVING", "Wrong-Way Driving"),
        ("red-light violation", "Red Light Violation"),
        ("\ufeffTraffic Accidents", "Traffic Accidents"),
        ("normal ", NORMAL),
        ("Abnormal", ABNORMAL),
    ],
)
def test_normalize_label_maps_known_variants(raw, canonical):
    assert normalize_label(raw) == canonical


def test_unknown_label_raises_naming_it_and_is_not_fuzzy():
    with pytest.raises(UnknownLabelError, match="Red Ligth Violation") as caught:
        normalize_label("Red Ligth Violation")  # a typo the release does not have
    assert isinstance(caught.value, ValueError)
    assert caught.value.label == "Red Ligth Violation"
    with pytest.raises(UnknownLabelError):
        normalize_label("Falling Object")
    assert normalize_label("Falling Object", lenient=True) == UNKNOWN
    with pytest.raises(TypeError, match="must be a str"):
        normalize_label(None)  # type: ignore[arg-type]


def test_every_alias_points_at_a_category():
    assert set(taxonomy.ALIASES.values()) <= set(taxonomy.CATEGORIES)


def test_main_class_and_type_accept_raw_spellings():
    assert taxonomy.main_class_of("Red Lgiht Violation") == "Traffic"
    assert taxonomy.type_of("Red Lgiht Violation") == "Environment"
    assert taxonomy.main_class_of("Drown") == "Health and Security"
    assert taxonomy.type_of("falling objects") == "Objects"
    with pytest.raises(ValueError, match="not an anomaly category"):
        taxonomy.main_class_of(NORMAL)
    with pytest.raises(ValueError, match="not an anomaly category"):
        taxonomy.type_of(ABNORMAL)
    with pytest.raises(UnknownLabelError):
        taxonomy.type_of("Meteor Strike")


@pytest.mark.parametrize(
    ("label", "expected"),
    [("Normal", NORMAL), (" normal", NORMAL), ("Abnormal", ABNORMAL), ("Fire", ABNORMAL), ("Drown", ABNORMAL)],
)
def test_binary_label_is_normal_or_abnormal_for_every_known_label(label, expected):
    assert taxonomy.binary_label(label) == expected


def test_binary_label_refuses_an_unknown_label():
    with pytest.raises(UnknownLabelError):
        taxonomy.binary_label("gibberish")


def test_count_labels_counts_unknowns_and_keeps_their_raw_text():
    result = taxonomy.count_labels(["Drown", "Drowning", "Normal", "xyz", "Abnormal", "xyz"])
    assert result.counts == Counter({"Drowning": 2, "Normal": 1, ABNORMAL: 1, UNKNOWN: 2})
    assert result.unknown_raw == Counter({"xyz": 2})
    assert result.unknown == 2


def _rows(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def test_every_raw_sft_label_maps_onto_exactly_the_37_categories_and_normal(release_sft_path):
    rows = _rows(release_sft_path)
    raw_labels = Counter(row["anomaly_type"] for row in rows)
    assert len(raw_labels) == 43
    result = taxonomy.count_labels(row["anomaly_type"] for row in rows)
    assert result.unknown == 0
    assert set(result.counts) == set(taxonomy.CATEGORIES) | {NORMAL}
    assert result.counts[NORMAL] == 941
    assert result.counts["Animals Hurt Human"] == 41  # 29 "Animal Hurts Human" + 12
    assert result.counts["Drowning"] == 20  # 8 "Drown" + 12


def test_which_tag_of_each_sft_answer_names_the_rows_category(release_sft_path):
    for row in _rows(release_sft_path):
        which = re.search(r"<which>(.*?)</which>", row["answer"]).group(1)
        assert normalize_label(which) == normalize_label(row["anomaly_type"])


def test_rl_labels_are_binary(release_rl_path):
    result = taxonomy.count_labels(row["solution"] for row in _rows(release_rl_path))
    assert result.counts == Counter({ABNORMAL: 3484, NORMAL: 2964})
