"""The user's verbs, each a thin layer over the library: fit and add, score, evaluate, compare,
and the command line that calls them."""
