"""Segmentation models, losses and their precision and storage helpers.

Plain TensorFlow/Keras (never imports TFF). Modules: `segresnet` (the
network), `layers` (its group norm and trilinear upsampling), `losses`
(soft Dice, Dice + BCE), `metrics` (Dice metrics), `precision`
(mixed-precision policies), `model_io` (saving and loading a model folder).
"""
