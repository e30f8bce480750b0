"""Data files the engine ships: the default model (Models/default) and the sample CT (SampleData).

Installed by pip as the package `contrastseg.resources`; the Slicer extension installs this folder beside
the modules. Locate files through `contrastseg.paths`, never by hard-coded paths.
"""
