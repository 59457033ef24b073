"""The notebooks (notebooks/en/, notebooks/pt/) and `python -m notebooks`, which executes them and writes HTML copies
with their outputs (notebooks/run.py)."""
