"""The console scripts, one module per command: mpee-train (train.py), mpee-eval (eval.py), mpee-export
(export.py), mpee-convert and mpee-split (tools.py); common.py holds what they share.
`python -m mpee_export.cli COMMAND` runs them as subcommands (__main__.py). Nothing else in mpee_export imports
this package."""
