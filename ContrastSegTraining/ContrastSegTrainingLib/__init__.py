"""The ContrastSegTraining module's rooms, all free of Qt so they run under slicer-core in CI:

export (CT + corrected Segmentation node -> a new dataset entry), runs (plan, launch as a detached engine
process, follow, cancel, re-attach, resume), plots (the live loss chart as MRML table/plot nodes),
compare (one CT segmented with two models, side by side), parameter (the panel's settings).
"""
