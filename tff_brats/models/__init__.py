"""Segmentation models, losses and their precision and storage helpers.

Plain TensorFlow/Keras (never imports TFF). Modules: `segresnet` (the
network), `losses` (soft Dice, Dice + BCE), `precision` (mixed-precision
policies), `model_io` (saving and loading a model folder).
"""
