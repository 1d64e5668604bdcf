"""tomoseg inside napari: a reader and widgets over the library (``pip install 'tomoseg[napari]'``).

A front end beside the command line (``cli/``): each widget builds settings, makes library
calls (:class:`~tomoseg.Predictor`, :func:`tomoseg.fine_tune`, :func:`tomoseg.measure_objects`,
:func:`~tomoseg.inference.suggest.suggest`) in a napari worker thread with a progress bar and
a Cancel button (the library's ``progress=`` / ``cancel=``), and shows a
:class:`~tomoseg.TomosegError` as one line in napari's notification area. Only this package
imports napari, magicgui and Qt: the base install stays without them.

The manifest is ``napari.yaml`` beside this file (entry point ``napari.manifest``).
"""
