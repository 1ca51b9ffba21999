"""The main job, end to end: the paper's whole method on one catalogue, and its ablation report.

``settings`` (what to run, every default once), ``plan`` (the stages in order), ``runner``
(skipping finished stages, resuming a killed one, timing), ``final`` (the published model, chosen
on validation, with its card), ``report`` (``report.md`` and the plots). ``afmrl pipeline`` is the
command line.
"""
