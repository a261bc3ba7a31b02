"""From a score to a verdict: Clopper-Pearson statistics, the calibrated threshold, the rule."""
