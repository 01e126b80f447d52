"""Federated statistics under differential privacy: the site's mechanism and the combination.

Plain typed Python over NumPy, shared by both sides and free of torch and Flower:
:mod:`~veracity.analytics.calibration` turns a query's epsilon share into a Gaussian noise
multiplier, :mod:`~veracity.analytics.mechanism` computes a site's exact release of a query
(its layout, per-figure scale and replace-one sensitivity) and adds the noise,
:mod:`~veracity.analytics.combine` adds the sites' noisy releases up and derives each
query's figure with its standard error from the known noise scales.
"""
