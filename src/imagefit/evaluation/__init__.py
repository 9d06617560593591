"""Evaluating a fitted classifier (result.py: `imagefit.evaluate`, `EvaluationResult`), per-class
rankings (ranking.py) and label issues and duplicates (issues.py). The package is not named
`evaluate`: that is the public function at the package root, which would shadow it.
"""
