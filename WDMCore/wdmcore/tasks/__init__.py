"""Tasks: a model, its inputs and settings in, volumes with their geometry out.

:mod:`.generate` draws new volumes; :mod:`.synthesize` makes a missing contrast from given ones (cWDM);
:mod:`.inpaint` fills a masked region (fastWDM3D, or RePaint with any unconditional model); :mod:`.vary` makes
SDEdit variations of a volume. :mod:`.inputs` reads and checks their input volumes. (Each module names its
task; the function of the same name is re-exported as ``wdmcore.<task>``.)
"""
