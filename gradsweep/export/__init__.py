"""Exporters of a results folder to experiment trackers; each is imported only by its command.

- :mod:`gradsweep.export.mlflow`: ``gradsweep export mlflow RESULTS`` (needs ``gradsweep[mlflow]``).
"""
