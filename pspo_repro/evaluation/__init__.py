"""Evaluation: generation backends, answer grading (strict, flexible, permissive, paper) and statistics."""
