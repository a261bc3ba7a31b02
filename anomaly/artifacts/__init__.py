"""What the library leaves on disk: model bundles, scoring run directories, heatmap pictures."""
