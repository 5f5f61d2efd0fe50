"""The data: the task table (glue.py), where examples come from (datasets.py), dev splits (split.py), tokenised
length-grouped batches (batching.py). Imports the model stage only."""
