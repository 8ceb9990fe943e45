"""Evaluation: predictions stored once, per-class AUROC with bootstrap CIs, operating points, curves."""
