"""Studies on Ray Tune: the runner, the trainables, the recorder callback, the results tables."""
