"""WHAT is fitted: Pyro programs and the math of each model family."""
