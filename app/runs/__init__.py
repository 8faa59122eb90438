"""What a run needs around the engine, shared by the worker (``app.jobs.tasks``) and the CLI.

``inputs`` loads the model, dataset and recipe of a run (from stored rows or from local files);
``export`` writes the files every run leaves (exports, ``masks.npz``); ``results`` puts them and
the result model into the artifact store; ``cli`` is ``prunelab run``, which writes the same
files into a folder.
"""
