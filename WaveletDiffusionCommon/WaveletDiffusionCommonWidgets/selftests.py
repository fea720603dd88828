"""What both modules' self-tests share: the rule that testing mode installs nothing, and small scene volumes."""

from __future__ import annotations

import unittest

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest
from WaveletDiffusionCommonLib import dependencies


class SelfTest(ScriptedLoadableModuleTest):
    """A module's self-test: in testing mode (ctest starts Slicer with --testing) a missing requirement skips
    every test with its reason (unittest's SkipTest; the CMake registration makes ctest report it as a skip),
    since there nothing may be installed and no dialog may wait. Outside it (*Reload and Test*) the test asks to
    install, as the module's buttons do."""

    logic = None  # one logic (one worker) for all the tests of the class: it starts once
    requester = "Wavelet Diffusion"
    extra: tuple[dependencies.Requirement, ...] = ()

    @classmethod
    def makeLogic(cls):
        raise NotImplementedError

    @classmethod
    def tearDownClass(cls):
        if cls.logic is not None:
            cls.logic.shutdown()
            cls.logic = None

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """*Reload and Test*: every test of the class, in order."""
        try:
            for name in sorted(n for n in dir(self) if n.startswith("test_")):
                self.setUp()
                getattr(self, name)()
        finally:
            self.tearDownClass()

    def requireLogic(self):
        """The logic, once everything the tests need is installed."""
        if slicer.app.testingEnabled():
            reason = dependencies.testing_skip_reason(self.requester, extra=self.extra)
            if reason:
                raise unittest.SkipTest(reason)
        if type(self).logic is None:
            type(self).logic = self.makeLogic()
        self.logic.ensureDependencies()
        return self.logic

    def skip(self, reason: str):
        raise unittest.SkipTest(f"{self.requester} self-test skipped: {reason}")


def addBlobVolumes(count: int = 3, size: int = 20) -> list:
    """``count`` noisy Gaussian blobs of ``size``^3 voxels as volume nodes of the scene."""
    import numpy as np

    rng = np.random.default_rng(0)
    grid = np.indices((size,) * 3).astype(np.float32) - size / 2
    nodes = []
    for i in range(count):
        blob = np.exp(-(grid**2).sum(axis=0) / (size + 5 * i)) * 100 + rng.random((size,) * 3) * 5
        nodes.append(slicer.util.addVolumeFromArray(blob.astype(np.float32), name=f"blob{i}"))
    return nodes


def addPhantomVolume(name: str, contrast: int = 0, size: int = 32):
    """A head-like phantom (ellipsoids) of ``size``^3 voxels on an anisotropic, shifted grid: results must keep
    it. ``contrast`` changes the intensities (as another MR sequence of the same head)."""
    import numpy as np
    from WaveletDiffusionCommonLib import volumes

    k, j, i = (np.indices((size,) * 3, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    head = (i / 0.85) ** 2 + (j / 0.95) ** 2 + (k / 0.8) ** 2 <= 1
    ventricles = ((i - 0.15) / 0.12) ** 2 + (j / 0.3) ** 2 + (k / 0.2) ** 2 <= 1
    array = np.where(head, 0.6 + 0.1 * contrast, 0.0) + np.where(ventricles, 0.3 - 0.2 * contrast, 0.0)
    affine = np.diag([1.2, 1.0, 1.5, 1.0])
    affine[:3, 3] = (-18.0, 5.0, -24.0)
    return volumes.add_volume_from_array(slicer.mrmlScene, array.astype(np.float32), affine, name)
