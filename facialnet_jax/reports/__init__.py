"""Measures and pictures of predictions against labels: accuracy per age decade, gender and race,
confusion matrices (CSV and PNG), training curves from the event files and the
cross-validation report. Imports only `data` (the label vocabulary)."""
