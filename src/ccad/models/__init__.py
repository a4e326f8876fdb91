"""Layer 3, models: what a trained model is and runs, without the pipeline around it.

The Keras classifier (:mod:`~ccad.models.classifier`), the shipped lung segmenter (:mod:`~ccad.models.lungs`,
ONNX Runtime), the decision rule, the out-of-distribution guard, stored heads and severity heads, the typed
run metadata and bundle card (:mod:`~ccad.models.card`), INT8 quantization. May import :mod:`ccad.io`.

This folder also holds the shipped segmenter's weights (``lung-segmenter.onnx``) and card.
"""
