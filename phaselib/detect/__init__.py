"""Transition detectors: the paper's offline heuristics, online alarms, change points, curvature."""
