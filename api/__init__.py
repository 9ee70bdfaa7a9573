"""The HTTP service over the champion (``python -m api``): recommendations, predictions, fold-in
of new users' ratings, the model, lake files, pipeline triggers and health. Nothing imports it."""
