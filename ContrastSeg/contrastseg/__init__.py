"""ContrastSeg engine: coarse-to-fine abdominal organ segmentation of CT with contrastively pretrained models.

Plain Python (no Slicer import) so the same code runs in the CLI, the Slicer modules (as a subprocess), the
tests, the benchmarks and on clusters.
"""

__version__ = "0.1.0"
