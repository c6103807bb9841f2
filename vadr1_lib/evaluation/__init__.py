"""Stage 3, evaluation: predictions files from the trained models, the release's figures and
the strict ones, VANE-style questions, and the README's results table."""
