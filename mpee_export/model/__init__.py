"""The model: MpeeConfig (config.py), MpeeModel (modeling.py), checkpoint folders (checkpoint.py) and the
research-code converter (convert.py). Imports no other stage."""
