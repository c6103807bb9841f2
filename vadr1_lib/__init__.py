"""vadr1_lib: the small library behind the Vad-R1 teaching notebooks."""

__version__ = "0.1.0"
