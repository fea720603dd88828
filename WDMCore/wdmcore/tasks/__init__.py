"""Tasks: a model, its inputs and settings in, volumes with their geometry out.

:mod:`.generate` draws new volumes. (The module names the task; the function of the same name is
re-exported as ``wdmcore.generate``.)
"""
