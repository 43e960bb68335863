"""Constants shared by the data, the models and the evaluators; this module imports nothing, so any layer
may use it."""

IGNORE_LABEL_ID = -100  # a label position that no loss or accuracy counts
