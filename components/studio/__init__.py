"""The studio: paint a label map in a browser, see the model's photo beside it (docs/STUDIO.md).

``python -m components.studio --model URI`` (:mod:`components.studio.cli`) serves a local page
(:mod:`components.studio.page`, Gradio) over :class:`components.studio.engine.Studio`, which reads
the canvas with the model's palette (:mod:`components.studio.palette`), starts from validation
layouts of a prepared dataset (:mod:`components.studio.layouts`) and generates with the model's
:class:`dagan.inference.Synthesizer`.
"""
