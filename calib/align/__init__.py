"""Aligning smol-llava's vision tower to its language model: train only the projector (LLaVA's first stage).

The vision tower (EfficientNet-Lite0) and the language model (SmolLM2) stay frozen. Data are synthetic
scenes (runtime.scenes) with captions and short questions, plus scikit-image photos with hand-written
captions; the loss is on the answer tokens of single-turn chats in the exact inference format.

    python -m calib.align --out DIR     # train, evaluate against the seeded-random projector, write DIR
"""
