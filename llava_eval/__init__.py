"""Evaluation of trained runs: greedy generation from cached features and the paper's benchmark scorers.

Imports `stages/` and `train/`, never `pipeline/` or Ray: benchmark images reach a store through
`just extract` like any other images (DESIGN §7).
"""
