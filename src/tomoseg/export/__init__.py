"""Sharing a trained network: ``tomoseg export`` (:func:`~tomoseg.export.exporter.export_run`).

A run becomes a bioimage.io model package (Fiji/deepImageJ, ilastik, napari, BiaPy run it;
:mod:`tomoseg.export.bioimageio`), or one TorchScript or ONNX file with its normalisation in a
JSON beside it (:mod:`tomoseg.export.files`). Needs ``pip install 'tomoseg[export]'``.
"""
