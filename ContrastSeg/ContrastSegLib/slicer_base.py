"""Slicer's scripted-module base classes, or plain stand-ins where only slicer-core is installed.

Both modules import their bases from here, so their Logic classes load under slicer-core (real MRML, no Qt)
for the tests, and under the Slicer application unchanged.
"""

import unittest

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                               ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
except ImportError:  # slicer-core: no Qt, no application
    ScriptedLoadableModule = ScriptedLoadableModuleWidget = object
    ScriptedLoadableModuleTest = unittest.TestCase  # what Slicer's is, less delayDisplay: the self-tests load

    class ScriptedLoadableModuleLogic:
        def __init__(self, *args, **kwargs):
            pass

    def parameterNodeWrapper(cls):
        return cls

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
           "ScriptedLoadableModuleWidget", "parameterNodeWrapper"]
