"""The Slicer-side (qt, slicer.util) helpers that both modules' widgets use; the logic they share, which never
imports Qt, is ``WaveletDiffusionCommonLib``.

* :mod:`.helpers` - the help text's link, error details, the message for an older Slicer, Slicer's installers
  for the first-use dependency check, durations as text
"""
