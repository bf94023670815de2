"""Datasets: prepared on-disk formats, mini data generators and real-source preparation.

* :mod:`sslaug.data.formats` -- the prepared formats (array, imagefolder, coco) and loaders.
* :mod:`sslaug.data.mini` -- deterministic mini data for fast end-to-end runs.
* :mod:`sslaug.data.sources` -- download / extract / prepare for real datasets.
* :mod:`sslaug.data.prepare` -- the ``prepare_dataset`` rule entry point.
"""
