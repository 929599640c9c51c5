"""The pipeline's training steps on data in memory, one module per stage: a stage reads its inputs, calls its step,
writes the outputs and records its run; :func:`labelnoise.fitting.fit` calls the same steps in a row, with no file,
DVC or MLflow in between. Every step takes the whole config (its ``auto`` params settled by
:func:`labelnoise.auto.settle_stage`) and a TrainView, never a true train label. One module per step keeps each
stage's code dependencies (dvc.yaml) its own.
"""
