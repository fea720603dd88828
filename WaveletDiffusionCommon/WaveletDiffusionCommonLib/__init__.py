"""What both Slicer modules (*Wavelet Diffusion* and *Wavelet Diffusion Training*) build on, importable without
Slicer's GUI (no qt, no ctk, no wdmcore).

* :mod:`.process` - child processes that speak JSON lines (the generation worker, ``wdm train``), never blocking
* :mod:`.polling` - :class:`~.polling.PolledLogic`, the base of both logic classes: the scene, the log, polling
* :mod:`.dependencies` - what to install on first use, and through which of Slicer's installers
* :mod:`.memory` - how much memory a run needs, and the warning when it does not fit
* :mod:`.settings` - a module's last choices in the application settings
* :mod:`.volumes` - arrays, files and geometry -> scalar volume nodes (the one (i,j,k) <-> (k,j,i) swap)
* :mod:`.support` - which Slicer the modules run in
* :mod:`.reloading` - *Reload* in developer mode reloads the Libs too
"""
