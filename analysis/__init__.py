"""Feature analyses of the paper on top of the cache (imports `stages/` only): image–text matching from
cross-attention, PCA maps, pairwise similarity, per-word attention maps, CKA, and the HTML report.
`python -m analysis.cli <what> ...` (`just analyze`, `just inspect`); docs/analysis.md maps each command
to the paper's table or figure."""
