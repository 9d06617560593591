"""The HTML report: rendering (html.py, figures.py) and assembling it from a run (build.py)."""
