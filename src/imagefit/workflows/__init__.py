"""One module per command: `imagefit X` parses in `cli/X.py` and calls `workflows/X.py`, which
does the work through the library and returns a result to print. `run_folder.py` owns every file
of a run folder.
"""
