"""Analyses of learned masks and results: Jaccard, reports, figures."""
