"""The offline annotator's words: per-category phrase banks and one template list per P2C-CoT step.

Written for the synthetic footage (anomalies drawn into a campus-path CCTV view). Kept
apart from :class:`vadr1_lib.data.annotate.OfflineAnnotator`, which only chooses among
them, so the text a tiny model must learn to write can be read (and changed) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from vadr1_lib.data import taxonomy


@dataclass(frozen=True)
class CategoryPhrases:
    """Interchangeable wordings for one category; one of each is drawn per clip.

    Every entry is a lowercase clause without final period, because the templates embed
    it mid-sentence: ``events`` completes "In this video, ...", ``whys`` "This is
    considered abnormal because ...", ``hows`` "As a result, ...", ``causes`` "Likely
    caused by ...", ``norms`` "it violates ...".
    """

    events: tuple[str, ...]
    whys: tuple[str, ...]
    causes: tuple[str, ...]
    norms: tuple[str, ...]
    hows: tuple[str, ...]


# Written for the synthetic footage (anomalies drawn into a campus-path CCTV view).
PHRASES: dict[str, CategoryPhrases] = {
    "Fire": CategoryPhrases(
        events=(
            "flames and smoke rise from a spot on the path",
            "a fire burns on the paved path",
            "a fire flares up on the walkway",
        ),
        whys=("an open fire on a walkway is a clear safety hazard", "fire has no place on a pedestrian path"),
        causes=("a discarded cigarette or burning litter", "careless use of fire nearby"),
        norms=("fire safety rules", "basic fire safety"),
        hows=(
            "passers-by could be burned and the fire could spread",
            "people nearby are put at risk of burns and smoke",
        ),
    ),
    "Explosion": CategoryPhrases(
        events=(
            "a sudden blast throws out fire and debris",
            "an explosion bursts on the path with a bright flash",
            "something explodes with a flash and a burst of smoke",
        ),
        whys=(
            "a blast in a public place is sudden and violent",
            "explosions never happen in normal campus life",
        ),
        causes=("a gas leak or a faulty device", "a hazardous object left on the path"),
        norms=("public safety rules", "rules on hazardous materials"),
        hows=(
            "people nearby could be injured by the blast and debris",
            "the blast can injure passers-by and damage property",
        ),
    ),
    "Falling Objects": CategoryPhrases(
        events=(
            "an object drops from above onto the path",
            "something falls from overhead and hits the ground",
            "an object falls onto the walkway from above",
        ),
        whys=("objects should not fall onto a busy walkway", "a falling object can strike people below"),
        causes=("a loose item on a building or a careless drop", "poorly secured items overhead"),
        norms=("rules for securing objects at height", "building safety rules"),
        hows=("a pedestrian below could be struck and hurt", "people walking below are at risk of injury"),
    ),
    "Obstacles on Road": CategoryPhrases(
        events=(
            "an object lies on the path and blocks the way",
            "an obstacle appears in the middle of the walkway",
            "a large object is left lying across the path",
        ),
        whys=("the path should stay clear for people passing", "an obstacle on a walkway can trip people"),
        causes=("careless dumping or cargo falling off a cart", "someone leaving debris behind"),
        norms=("the rule to keep public paths clear", "rules against blocking public ways"),
        hows=("passers-by may trip or have to walk around it", "people and bikes could run into it"),
    ),
    "Flooding or Tsunami": CategoryPhrases(
        events=(
            "water spreads over the path and floods it",
            "the walkway fills with rising water",
            "flood water covers part of the path",
        ),
        whys=("a dry path should not suddenly fill with water", "flooding makes the walkway unsafe"),
        causes=("heavy rain or a burst water pipe", "a blocked drain or a broken pipe"),
        norms=("drainage and maintenance standards", "the upkeep expected of public paths"),
        hows=(
            "people may slip and the path becomes impassable",
            "passers-by could slip and property could be damaged",
        ),
    ),
    "Electrical Failures": CategoryPhrases(
        events=(
            "sparks burst from electrical equipment by the path",
            "a light fixture sparks and flickers",
            "electric sparks flash near the walkway",
        ),
        whys=(
            "sparking equipment signals a dangerous electrical fault",
            "electrical equipment should never spark in public",
        ),
        causes=("damaged wiring or an overloaded circuit", "worn cables or water in the equipment"),
        norms=("electrical safety standards", "maintenance rules for public wiring"),
        hows=(
            "passers-by risk electric shock and a fire could start",
            "it may cause shocks, a fire or a power cut",
        ),
    ),
    "Air Pollution": CategoryPhrases(
        events=(
            "thick smoke drifts across the path",
            "a cloud of haze spreads over the walkway",
            "dense smoke fills part of the scene",
        ),
        whys=("thick smoke in open air signals pollution", "the air over a walkway should be clear"),
        causes=("burning waste or a nearby exhaust", "open burning or an industrial leak"),
        norms=("air quality rules", "rules against open burning"),
        hows=("people nearby breathe harmful air and see less", "it harms health and lowers visibility"),
    ),
    "Wrong-Way Driving": CategoryPhrases(
        events=(
            "a vehicle drives the wrong way along the path",
            "a car moves against the direction of travel",
            "a vehicle heads against the flow of traffic",
        ),
        whys=("vehicles must follow the set direction of travel", "driving against the flow is forbidden"),
        causes=("a careless or confused driver", "a driver ignoring direction signs"),
        norms=("traffic rules", "the rules of the road"),
        hows=(
            "it can cause head-on crashes and endanger pedestrians",
            "other road users face a risk of collision",
        ),
    ),
    "Illegal Parking": CategoryPhrases(
        events=(
            "a vehicle stops and stays parked on the path",
            "a car is left parked on the walkway",
            "a vehicle parks where parking is not allowed",
        ),
        whys=("vehicles may not park on a pedestrian path", "parking here blocks a path meant for walking"),
        causes=("a driver wanting a quick stop", "a driver ignoring parking signs"),
        norms=("parking regulations", "the rule that walkways are for pedestrians"),
        hows=(
            "pedestrians are blocked and must walk around it",
            "it obstructs passers-by and emergency access",
        ),
    ),
    "Animals in Urban Areas": CategoryPhrases(
        events=(
            "a large animal wanders onto the path",
            "an animal roams across the walkway",
            "a wild animal appears among the passers-by",
        ),
        whys=(
            "wild animals are not expected on a busy campus path",
            "an animal loose on a walkway is out of place",
        ),
        causes=("an animal straying from nearby green space", "an escaped or wandering animal"),
        norms=("rules for keeping animals under control", "public safety expectations"),
        hows=("people may be startled, bitten or hurt", "it may frighten or injure passers-by"),
    ),
}


def phrases_for(category: str) -> CategoryPhrases:
    """The category's own phrase bank, or a generic one that names the category.

    The fallback keeps any of the 37 categories annotatable (and format-valid) before
    someone writes its specific wording; its text is blander, not wrong.
    """
    if category in PHRASES:
        return PHRASES[category]
    if category not in taxonomy.SUB_CLASSES:
        raise ValueError(f"{category!r} is not an anomaly category")
    name = category.lower()
    main = taxonomy.main_class_of(category).lower()
    return CategoryPhrases(
        events=(f"an incident of {name} occurs", f"signs of {name} appear"),
        whys=(
            f"{name} disrupts the normal order of this place",
            f"such {main} incidents are not part of routine activity",
        ),
        causes=("an unexpected lapse in safety or conduct", "circumstances outside the normal routine"),
        norms=("public safety rules", "the norms of safe public behavior"),
        hows=("people nearby could be harmed or disturbed", "it may cause harm and disorder"),
    )


# One "prompt" per P2C-CoT step, as in the paper; each is a list of interchangeable
# sentence templates. Placeholders: scene, event, where, t0/t1 (seconds), why, category,
# cause, norm, how.
#
# Why so few and so short: these texts are what the student profile's ~1M-parameter model
# must learn to write, and on 2 CPU cores every target token is paid for in each step
# (the first version, three wordings per step and the release's longer sentences, gave
# 260-token abnormal targets and a model that learned the wording but not the video).
# Step 1 is the same sentence for normal and abnormal clips: global perception describes
# the scene, not the verdict, so the verdict is first written at the start of step 2,
# one place where the model has to look at the video to continue.
SCENE_STEP_TEMPLATES: tuple[str, ...] = ("The video shows {scene}.",)  # step 1 of both forms
ABNORMAL_STEP_TEMPLATES: tuple[tuple[str, ...], ...] = (
    SCENE_STEP_TEMPLATES,  # global perception: the scene; no anomaly, no verdict
    (  # local perception: the event, when, where; no judgement
        "At {t0}, {event} in the {where}.",
        "From {t0} to {t1}, {event} in the {where}.",
    ),
    (  # shallow cognition: why abnormal, the category
        "{Why}, so its category is {category}.",
    ),
    (  # deep cognition: causes, violated norms, consequences
        "Likely caused by {cause}, it violates {norm}; {how}.",
    ),
)
NORMAL_STEP_TEMPLATES: tuple[tuple[str, ...], ...] = (
    SCENE_STEP_TEMPLATES,  # the scene and its objects
    (  # why it is normal
        "Nothing unusual happens; people and objects behave as expected.",
        "Nothing unusual happens; the activity is ordinary for this place.",
    ),
)
NORMAL_WHATS = (
    "only routine activity takes place",
    "the scene stays calm and orderly",
)
NORMAL_WHYS = (
    "no hazard, crime or disruption appears",
    "people and objects behave as expected",
)
