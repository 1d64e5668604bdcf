"""Sharing a trained network: ``tomoseg export`` (:func:`~tomoseg.sharing.exporter.export_run`).

A run becomes a bioimage.io model package (Fiji/deepImageJ, ilastik, napari, BiaPy run it;
:mod:`tomoseg.sharing.bioimageio`), or one TorchScript or ONNX file with its normalisation in a
JSON beside it (:mod:`tomoseg.sharing.files`). Needs ``pip install 'tomoseg[export]'``.
"""
